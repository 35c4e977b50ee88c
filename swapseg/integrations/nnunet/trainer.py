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
from swapseg.integrations._plan import MemoryPlan, choose_plan, parse_size
from swapseg.integrations.nnunet.shapes import full_image_plans
from swapseg.integrations.steps import StepSwapper
from swapseg.io import atomic_path

__all__ = ["nnUNetTrainerSwap", "nnUNetTrainerSwapFullImage", "nnUNetTrainerSwap_debug",
           "BUDGET_ENV", "PROFILE_ENV", "PLAN_FILE", "STATS_FILE"]

BUDGET_ENV = "SWAPSEG_MEMORY_BUDGET"
PROFILE_ENV = "SWAPSEG_DEVICE_PROFILE"
PLAN_FILE = "swapseg_plan.json"
STATS_FILE = "swapseg_stats.json"
_CUDA = torch.device("cuda")


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
        """The planner's plan for this network, patch and budget; exits 2 when none fits."""
        profile = os.environ.get(PROFILE_ENV, "").strip() or "local"
        try:
            budget = self.swap_budget()
            plan = choose_plan(self._planning_network(), self.swap_input_shape(), profile,
                               budget_bytes=budget, loss_fn=self._trace_loss,
                               autocast_dtype=torch.float16 if self.device.type == "cuda"
                               else None,
                               tier="cuda" if self.device.type == "cuda" else "host")
        except InputError as exc:
            # nnUNetv2_train has no handler of ours: one line and exit 2, as swapseg does
            print(f"{type(self).__name__}: {str(exc).splitlines()[0]}", file=sys.stderr)
            raise SystemExit(2) from None
        self.swap_budget_bytes = budget
        return plan

    def on_train_start(self) -> None:
        if not self.was_initialized:
            self.initialize()
        self.swap_plan = self.choose_swap_plan()  # before the data loaders: fail fast
        self.swapper = StepSwapper(self.swap_plan)
        super().on_train_start()
        self._write_json(os.path.join(self.output_folder_base, PLAN_FILE), {
            "trainer": type(self).__name__, "configuration": self.configuration_name,
            "input_shape": list(self.swap_input_shape()),
            "budget_bytes": self.swap_budget_bytes,
            "device_profile": os.environ.get(PROFILE_ENV, "").strip() or "local",
            "plan": self.swap_plan.to_dict()})
        self.print_to_log_file(f"swapseg: patch {list(self.configuration_manager.patch_size)}, "
                               f"budget {self.swap_budget_bytes} bytes, plan "
                               f"{self.swap_plan.to_json()}")

    def train_step(self, batch: dict) -> dict:
        if self.swapper is None:  # a step outside run_training: plan as on_train_start does
            self.swap_plan = self.choose_swap_plan()
            self.swapper = StepSwapper(self.swap_plan)
        with self.swapper.step(unwrap(self.network)):
            return super().train_step(batch)

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self._epoch_start = dict(self.swapper.summary()) if self.swapper else {}

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        super().on_train_epoch_end(train_outputs)
        if self.swapper is None:
            return
        now, before = self.swapper.summary(), self._epoch_start
        swapped = now["swapped"] - before.get("swapped", 0)
        out = now["bytes_out"] - before.get("bytes_out", 0)
        self.print_to_log_file(f"swapseg: swapped {swapped} tensors ({out} bytes) in "
                               f"{now['steps'] - before.get('steps', 0)} steps, peak "
                               f"{now['peak_saved_bytes']} saved bytes on the device")

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
