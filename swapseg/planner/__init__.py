"""swapseg.planner: trace a step of any model, simulate plans on a device profile, choose.

    from swapseg.planner import plan_memory
    from swapseg.offload import apply_plan
    found = plan_memory(model, (1, 4, 192, 192, 192), "a100-pcie4", budget_bytes="6GiB")
    with apply_plan(model, found.plan):      # found.predicted, .keep_all, .rows, .profile
        loss_fn(model(x)).backward()

``choose_plan`` is ``plan_memory(...).plan``. Lower level: ``trace_step`` ->
``simulate`` / ``search`` on a ``DeviceProfile``. Imports only ``swapseg.offload``,
``swapseg.errors``, ``swapseg.offload.sizes`` and itself; knows nothing of any particular model.
See docs/planner.md.
"""

from swapseg.planner.choose import (
    PlanEvidence,
    choose_plan,
    model_class,
    plan_memory,
    resolve_profile,
    trace_model,
)
from swapseg.planner.local import calibration_shape, get_profile, measure_local
from swapseg.planner.profiles import PROFILES, DeviceProfile
from swapseg.planner.search import (
    DEFAULT_MARGIN,
    Candidate,
    SearchResult,
    candidates,
    module_groups,
    pareto_front,
    search,
)
from swapseg.planner.simulate import SimResult, simulate
from swapseg.planner.trace import LossFn, StepTrace, trace_step

__all__ = ["plan_memory", "PlanEvidence", "choose_plan", "resolve_profile", "model_class",
           "trace_model", "trace_step", "StepTrace", "LossFn", "simulate", "SimResult",
           "search", "SearchResult", "Candidate", "candidates", "module_groups",
           "pareto_front", "DEFAULT_MARGIN", "get_profile", "measure_local",
           "calibration_shape", "DeviceProfile", "PROFILES"]
