"""The planner: trace a step, simulate plans on a device profile, choose one that fits.

    from swapseg.offload.plan import trace_step, simulate, search, get_profile
    tr = trace_step(model, (1, 4, 192, 192, 192))
    res = search(tr, get_profile("p100-nvlink"), 16 * 2**30)
    print(res.chosen.name, res.chosen.result.peak_bytes)

See docs/planner.md. ``swapseg.offload.hybrid.choose_plan`` wraps this for training.
"""

from swapseg.offload.plan.devices import PROFILES, DeviceProfile, get_profile, measure_local
from swapseg.offload.plan.search import Candidate, SearchResult, candidates, search
from swapseg.offload.plan.simulate import SimResult, simulate
from swapseg.offload.plan.trace import StepTrace, trace_step

__all__ = ["trace_step", "StepTrace", "simulate", "SimResult", "search", "SearchResult",
           "Candidate", "candidates", "get_profile", "measure_local", "DeviceProfile",
           "PROFILES"]
