"""swapseg.planner: trace a step of any model, simulate plans on a device profile, choose.

    from swapseg.planner import choose_plan
    from swapseg.offload import apply_plan
    plan = choose_plan(model, (1, 4, 192, 192, 192), "a100-pcie4", 6 * 2**30)
    with apply_plan(model, plan):
        loss_fn(model(x)).backward()

Lower level: ``trace_step`` -> ``simulate`` / ``search`` on a ``DeviceProfile``.
Imports only ``swapseg.offload``, ``swapseg.errors`` and itself; knows nothing of any
particular model. See docs/planner.md.
"""

from swapseg.planner.choose import choose_plan, resolve_profile
from swapseg.planner.local import calibration_shape, get_profile, measure_local
from swapseg.planner.profiles import PROFILES, DeviceProfile
from swapseg.planner.search import (
    DEFAULT_MARGIN,
    Candidate,
    SearchResult,
    candidates,
    module_groups,
    search,
)
from swapseg.planner.simulate import SimResult, simulate
from swapseg.planner.trace import LossFn, StepTrace, trace_step

__all__ = ["choose_plan", "resolve_profile", "trace_step", "StepTrace", "LossFn", "simulate",
           "SimResult", "search", "SearchResult", "Candidate", "candidates", "module_groups",
           "DEFAULT_MARGIN", "get_profile", "measure_local", "calibration_shape",
           "DeviceProfile", "PROFILES"]
