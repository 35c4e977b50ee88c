"""The paper's four swap configurations (Imai et al. 2019, Table 1) as planner candidates
(docs/planner.md).

Handed to :func:`swapseg.planner.search` as ``extra`` candidates, so plans for the
Isensee U-Net are compared against what Imai et al. ran:

1. swap every feature map (prefetch 1);
2. swap the first 500 of the model's 843 feature maps;
3. swap all but the decoder's;
4. as 3, prefetching 20 ahead.

Paper config 2 swapped the first 500 of 843 feature maps, counted by TFLMS's breadth-first
search over the TensorFlow graph. Our engine counts saved tensors in forward order (the
order autograd saves them), and PyTorch saves fewer tensors (one per storage it needs, no
separate swap nodes for every TF op). So config 2 is emulated as the same fraction,
500/843 of the unique saved storages, taken in forward order. In forward order that is
the encoder side, where BFS from the inputs in a U-Net also reached decoder maps early
through the skip connections; the emulation is therefore kinder to config 2 than TFLMS was.
"""

from __future__ import annotations

from swapseg.offload.policy import MemoryPlan, RecomputePolicy, SwapPolicy
from swapseg.planner.trace import StepTrace

__all__ = ["paper_candidates", "hybrid_plan", "PAPER_FRACTION_CONFIG2", "PAPER_CONFIGS",
           "HYBRID"]

#: Paper config 2: 500 of the model's 843 feature maps (TFLMS counting).
PAPER_FRACTION_CONFIG2 = 500 / 843

PAPER_CONFIGS = tuple(f"paper-config-{k}" for k in range(1, 5))

#: The methods bench's hybrid: recompute the decoder (speed policy), swap the rest.
HYBRID = "hybrid-recompute-speed-decoder-swap-rest-pf20"


def paper_candidates(trace: StepTrace) -> list[MemoryPlan]:
    """Configs 1-4 for a traced Isensee3DUNet step (3 and 4 need its ``decoder``)."""
    n_uniq = len(trace.unique_saved())
    c = [MemoryPlan(SwapPolicy(prefetch=1), name="paper-config-1"),
         MemoryPlan(SwapPolicy(n_tensors=round(PAPER_FRACTION_CONFIG2 * n_uniq)),
                    name="paper-config-2")]
    if any(s.scope.split(".")[0] == "decoder" for s in trace.saved):
        c += [MemoryPlan(SwapPolicy(exclude=("decoder.*",)), name="paper-config-3"),
              MemoryPlan(SwapPolicy(exclude=("decoder.*",), prefetch=20),
                         name="paper-config-4")]
    return c


def hybrid_plan() -> MemoryPlan:
    """Recompute each decoder block with the speed policy, swap everything else."""
    return MemoryPlan(SwapPolicy(prefetch=20), RecomputePolicy(("decoder.*",), "speed"), HYBRID)
