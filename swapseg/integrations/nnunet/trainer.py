"""nnU-Net v2 trainers whose training steps run under swapseg's memory plan.

``nnUNetTrainerSwap`` keeps nnU-Net's own ``train_step`` (autocast and GradScaler on CUDA,
gradient clipping, the optimizer step) and runs it inside the plan that the planner picks
for nnU-Net's network at its patch size and batch size. The budget is the GPU's memory,
or ``SWAPSEG_MEMORY_BUDGET`` (e.g. ``12GiB``); the device profile is measured locally
unless ``SWAPSEG_DEVICE_PROFILE`` names one (e.g. ``a100-pcie4``). The plan is written to
``swapseg_plan.json`` next to nnU-Net's ``plans.json``; each fold's swap totals go to its
log and to ``swapseg_stats.json`` in the fold folder.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

from swapseg.errors import InputError
from swapseg.integrations._plan import MemoryPlan, parse_size, plan_search
from swapseg.integrations.nnunet.fit import portable
from swapseg.integrations.nnunet.planner import PLAN_KEY
from swapseg.integrations.nnunet.shapes import full_image_plans
from swapseg.integrations.steps import StepSwapper
from swapseg.io import atomic_path

__all__ = ["nnUNetTrainerSwap", "nnUNetTrainerSwapFullImage", "nnUNetTrainerSwap_debug",
           "BUDGET_ENV", "PROFILE_ENV", "TIER_ENV", "PLAN_FILE", "STATS_FILE"]

BUDGET_ENV = "SWAPSEG_MEMORY_BUDGET"
PROFILE_ENV = "SWAPSEG_DEVICE_PROFILE"
TIER_ENV = "SWAPSEG_SWAP_TIER"
PLAN_FILE = "swapseg_plan.json"
STATS_FILE = "swapseg_stats.json"
_CUDA = torch.device("cuda")
PROGRESS_LINES = 10  # per epoch, when the log is not a terminal (a terminal has nnU-Net's)


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


def plan_line(plan: MemoryPlan, budget: int, pred: dict[str, Any],
              input_shape: tuple[int, ...]) -> str:
    """The plan as one readable line: what moves, the predicted peak against the budget."""
    parts = [plan.name or "keep-all"]
    if plan.swap is not None:
        parts.append(f"swap to {plan.swap.tier}")
    if plan.recompute is not None:
        parts.append(f"recompute ({plan.recompute.mode})")
    return (f"swapseg: plan {', '.join(parts)} for input {'x'.join(map(str, input_shape))}; "
            f"predicted peak {_gib(pred['predicted_peak_bytes'])} of {_gib(budget)}, step "
            f"{pred['predicted_step_s']:.3g} s ({pred['predicted_slowdown']:+.1%}) on "
            f"{pred['device_profile']} ({pred['source']})")


def _host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def unwrap(network: nn.Module) -> nn.Module:
    """The module whose forward runs: inside DDP and torch.compile wrappers."""
    while True:
        inner = getattr(network, "module", None) or getattr(network, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return network
        network = inner


class nnUNetTrainerSwap(nnUNetTrainer):
    """nnU-Net's trainer with each training step under swapseg's plan (see the module)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = _CUDA) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.swap_plan: MemoryPlan | None = None
        self.swap_budget_bytes: int | None = None
        self.swapper: StepSwapper | None = None
        self._epoch_start: dict[str, Any] = {}
        self.swap_prediction: dict[str, Any] = {}
        self._steps_done = self._epoch_step = 0

    # swapping hooks into eager autograd; a compiled graph would bypass the engine
    def _do_i_compile(self) -> bool:
        return False

    def swap_input_shape(self) -> tuple[int, ...]:
        """(B, C, *patch): one training step's network input."""
        return (self.batch_size, self.num_input_channels,
                *map(int, self.configuration_manager.patch_size))

    def swap_budget(self) -> int:
        env = os.environ.get(BUDGET_ENV, "").strip()
        if env:
            return parse_size(env, BUDGET_ENV)
        if self.device.type == "cuda":
            return torch.cuda.get_device_properties(self.device).total_memory
        return _host_memory_bytes()

    def _trace_loss(self, output: Any) -> torch.Tensor:
        """nnU-Net's own loss against an all-background target of the output's shape."""
        outs = list(output) if isinstance(output, (list, tuple)) else [output]
        n = outs[0].shape[1] if self.label_manager.has_regions else 1
        targets = [torch.zeros((o.shape[0], n, *o.shape[2:]), dtype=o.dtype) for o in outs]
        return self.loss(output, targets if isinstance(output, (list, tuple)) else targets[0])

    def _planning_network(self) -> nn.Module:
        """The same architecture built anew on the CPU: the trace never touches the device
        copy, and the planner may copy it (nnU-Net's decoder holds its encoder)."""
        return self.build_network_architecture(
            self.plans_manager, self.configuration_manager, self.num_input_channels,
            self.label_manager.num_segmentation_heads, self.enable_deep_supervision)

    def choose_swap_plan(self) -> MemoryPlan:
        """The plans file's swap plan (``swapseg nnunet plan-experiment``) when it was
        planned for this step and no budget is set, else the planner's plan for this
        network, patch and budget; the tier is made concrete for the device (on a CPU:
        disk, which frees memory). Exits 2 when no plan fits."""
        # nnUNetv2_train has no handler of ours: one line and exit 2, as swapseg does
        try:
            found = self._recorded_plan() or self._searched_plan()
            plan, self.swap_budget_bytes, self.swap_prediction = found
            tier = os.environ.get(TIER_ENV, "").strip()
            if tier and plan.swap is not None:  # e.g. host where pinned memory is scarce
                plan = plan.replace(swap=plan.swap.replace(tier=tier))
            return plan.concrete(self.device.type)
        except InputError as exc:
            print(f"{type(self).__name__}: {str(exc).splitlines()[0]}", file=sys.stderr)
            raise SystemExit(2) from None

    def _recorded_plan(self) -> tuple[MemoryPlan, int, dict[str, Any]] | None:
        rec = self.configuration_manager.configuration.get(PLAN_KEY)
        if not rec or rec.get("plan") is None or os.environ.get(BUDGET_ENV, "").strip():
            return None
        if [rec.get("batch_size"), *rec.get("patch_size", [])] != \
                [self.batch_size, *map(int, self.configuration_manager.patch_size)]:
            return None  # planned for another step (e.g. the whole-image trainer's)
        pred = {k: rec[k] for k in ("device_profile", "predicted_peak_bytes",
                                    "predicted_step_s", "predicted_slowdown")}
        return (MemoryPlan.from_dict(dict(rec["plan"])), int(rec["budget_bytes"]),
                {"source": "plans file", **pred})

    def _searched_plan(self) -> tuple[MemoryPlan, int, dict[str, Any]]:
        profile = os.environ.get(PROFILE_ENV, "").strip() or "local"
        cuda = self.device.type == "cuda"
        budget = self.swap_budget()
        ev = plan_search(self._planning_network(), self.swap_input_shape(), profile,
                         budget_bytes=budget, loss_fn=self._trace_loss,
                         autocast_dtype=torch.float16 if cuda else None,
                         tier="cuda" if cuda else "auto")
        return (portable(ev.plan), budget,
                {"source": "planned at start", "device_profile": profile,
                 "predicted_peak_bytes": int(ev.predicted.peak_bytes),
                 "predicted_step_s": ev.predicted.step_s,
                 "predicted_slowdown": ev.predicted.step_s / ev.keep_all.step_s - 1})

    def on_train_start(self) -> None:
        if not self.was_initialized:
            self.initialize()
        self.swap_plan = self.choose_swap_plan()  # before the data loaders: fail fast
        self.swapper = StepSwapper(self.swap_plan)
        super().on_train_start()
        self._write_json(os.path.join(self.output_folder_base, PLAN_FILE), {
            "trainer": type(self).__name__, "configuration": self.configuration_name,
            "input_shape": list(self.swap_input_shape()),
            "budget_bytes": self.swap_budget_bytes, **self.swap_prediction,
            "plan": self.swap_plan.to_dict()})
        self.print_to_log_file(plan_line(self.swap_plan, self.swap_budget_bytes,
                                         self.swap_prediction, self.swap_input_shape()))

    def train_step(self, batch: dict) -> dict:
        if self.swapper is None:  # a step outside run_training: plan as on_train_start does
            self.swap_plan = self.choose_swap_plan()
            self.swapper = StepSwapper(self.swap_plan)
        with self.swapper.step(unwrap(self.network)):
            out = super().train_step(batch)
        self._after_step(out)
        return out

    def _after_step(self, out: dict) -> None:
        self._steps_done += 1
        self._epoch_step += 1
        if self._steps_done == 1:
            self.print_to_log_file(self._measured_line())
        every = max(1, self.num_iterations_per_epoch // PROGRESS_LINES)
        if not sys.stdout.isatty() and self._epoch_step % every == 0:
            self.print_to_log_file(
                f"swapseg: epoch {self.current_epoch} step {self._epoch_step}/"
                f"{self.num_iterations_per_epoch}, loss {float(out['loss']):.4f}")

    def _measured_line(self) -> str:
        assert self.swapper is not None
        if self.device.type == "cuda":
            peak, what = torch.cuda.max_memory_allocated(self.device), "measured peak"
        else:  # a CPU has no allocator peak to read: the engine's count of saved tensors
            peak, what = self.swapper.summary()["peak_device_bytes"], "saved-tensor peak"
        predicted = self.swap_prediction.get("predicted_peak_bytes")
        return (f"swapseg: {what} {_gib(peak)} after the first step" +
                (f" (predicted peak {_gib(predicted)})" if predicted is not None else ""))

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self._epoch_start = self.swapper.stats.as_dict() | self.swapper.summary() \
            if self.swapper else {}
        self._epoch_step = 0

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        super().on_train_epoch_end(train_outputs)
        if self.swapper is None:
            return
        now = self.swapper.stats.as_dict() | self.swapper.summary()
        d = {k: now[k] - self._epoch_start.get(k, 0) for k in
             ("swapped", "bytes_out", "steps", "wait_s", "prefetch_misses")}
        self.print_to_log_file(
            f"swapseg: swapped {d['swapped']} tensors ({d['bytes_out']} bytes) in "
            f"{d['steps']} steps, peak {now['peak_device_bytes']} saved bytes on the device, "
            f"waited {d['wait_s']:.3f} s, {d['prefetch_misses']} prefetch misses")

    def on_train_end(self) -> None:
        super().on_train_end()
        if self.swapper is not None:
            self._write_json(os.path.join(self.output_folder, STATS_FILE),
                             self.swapper.summary() | {"stats": self.swapper.stats.as_dict()})

    def _write_json(self, path: str, data: dict[str, Any]) -> None:
        if self.local_rank != 0:
            return
        with atomic_path(path) as tmp:
            with open(tmp, "w") as f:
                json.dump(data, f, indent=2)


class nnUNetTrainerSwapFullImage(nnUNetTrainerSwap):
    """The paper's "no patching" inside nnU-Net: the patch is the median image shape,
    rounded up to the network's divisor; start-up stops with the missing bytes when no
    plan fits."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = _CUDA) -> None:
        super().__init__(full_image_plans(plans, configuration), configuration, fold,
                         dataset_json, device)


class nnUNetTrainerSwap_debug(nnUNetTrainerSwap):
    """Two epochs of a few steps and a small validation (for tests, like nnUNetTrainer_1epoch)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = _CUDA) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 2
        self.num_iterations_per_epoch = 3
        self.num_val_iterations_per_epoch = 1
