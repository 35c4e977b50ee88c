"""nnU-Net experiment planners that size the patch by what fits *with swapping*.

``nnUNetPlannerSwap`` (and one per ResEnc preset) plans like its nnU-Net parent (spacing,
transpose, normalisation, topology), then replaces the 3d_fullres patch: the largest patch
of nnU-Net's own shrinking chain, started at the whole median image (or ``max_patch``),
whose step swapseg's planner fits into the memory target within ``max_slowdown``
(``swapseg.integrations.nnunet.fit``). The chosen memory plan and its predictions go into
the configuration under ``"swapseg"``, where ``nnUNetTrainerSwap`` reads them. nnU-Net
looks for planner classes only inside its own package, so ``swapseg nnunet
plan-experiment`` hands the class to nnU-Net's ``plan_experiment_dataset``.
"""

from __future__ import annotations

import json
import math
from typing import Any

from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import (
    ExperimentPlanner,
)
from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import (  # noqa: E501
    nnUNetPlannerResEncL,
    nnUNetPlannerResEncM,
    nnUNetPlannerResEncXL,
)

from swapseg.errors import InputError
from swapseg.integrations.nnunet.fit import (
    DEFAULT_MAX_SLOWDOWN,
    DEFAULT_PROFILE,
    Verdict,
    judge,
    largest_passing,
    network_for,
    patch_chain,
)
from swapseg.integrations.nnunet.shapes import divisor

__all__ = ["PLANNERS", "PLAN_KEY", "SwapPlannerMixin", "nnUNetPlannerSwap",
           "nnUNetPlannerResEncMSwap", "nnUNetPlannerResEncLSwap", "nnUNetPlannerResEncXLSwap",
           "nnunet_estimate_bytes"]

#: The key of a configuration's swapseg record in the plans file.
PLAN_KEY = "swapseg"
_GIB = 2**30


def nnunet_estimate_bytes(planner: ExperimentPlanner, conf: dict, n_in: int, n_out: int) -> int:
    """nnU-Net's own VRAM estimate of a configuration, in bytes: its feature-map count
    scaled as its planner scales it (the reference count is the reference GPU's memory
    at the reference batch size)."""
    arch = conf["architecture"]
    count = planner.static_estimate_VRAM_usage(
        tuple(conf["patch_size"]), n_in, n_out, arch["network_class_name"],
        arch["arch_kwargs"], arch["_kw_requires_import"])
    three_d = len(conf["patch_size"]) == 3
    ref = planner.UNet_reference_val_3d if three_d else planner.UNet_reference_val_2d
    ref_bs = planner.UNet_reference_val_corresp_bs_3d if three_d \
        else planner.UNet_reference_val_corresp_bs_2d
    gb = count / ref * planner.UNet_reference_val_corresp_GB * conf["batch_size"] / ref_bs
    return int(gb * _GIB)


class SwapPlannerMixin:
    """The swap-aware patch choice, mixed into an nnU-Net planner class (see the module)."""

    swap_plans_name = "nnUNetPlansSwap"

    def __init__(self, dataset_name_or_id: Any, *args: Any, device_profile: str = DEFAULT_PROFILE,
                 max_slowdown: float = DEFAULT_MAX_SLOWDOWN,
                 max_patch: tuple[int, ...] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("plans_name", self.swap_plans_name)
        super().__init__(dataset_name_or_id, *args, **kwargs)  # type: ignore[call-arg]
        if not 0 <= max_slowdown < 10:
            raise InputError(f"max slowdown must be in [0, 10) (0.15 is 15%), got {max_slowdown}")
        if max_patch is not None and (len(max_patch) != 3 or min(max_patch) < 1):
            raise InputError(f"max patch must be three positive sides, got {max_patch}")
        self.swap_profile = device_profile
        self.swap_max_slowdown = float(max_slowdown)
        self.swap_max_patch = tuple(max_patch) if max_patch else None
        self._swap_verdicts: dict[str, Verdict] = {}

    def get_plans_for_configuration(self, spacing: Any, median_shape: Any,
                                    data_identifier: str, approximate_n_voxels_dataset: float,
                                    _cache: dict) -> dict:
        conf = super().get_plans_for_configuration(  # type: ignore[misc]
            spacing, median_shape, data_identifier, approximate_n_voxels_dataset, _cache)
        # 2d and the lowres search (many calls) keep nnU-Net's patch
        if len(spacing) != 3 or not data_identifier.endswith("3d_fullres"):
            return conf
        return self.swap_configuration(conf, spacing, median_shape)

    # -- the swap-aware choice -------------------------------------------------------------

    def _channels(self) -> tuple[int, int]:
        ds = self.dataset_json  # type: ignore[attr-defined]
        return len(ds.get("channel_names", ds.get("modality", {}))), len(ds["labels"])

    def _with_topology(self, conf: dict, patch: list[int], strides: list,
                       kernels: list, batch: int) -> dict:
        """``conf`` re-topologised for ``patch`` the way nnU-Net's planner does it."""
        n = len(strides)
        arch = {**conf["architecture"], "arch_kwargs": dict(conf["architecture"]["arch_kwargs"])}
        kw = arch["arch_kwargs"]
        top = self.UNet_max_features_3d  # type: ignore[attr-defined]
        base = self.UNet_base_num_features  # type: ignore[attr-defined]
        kw.update(n_stages=n, kernel_sizes=kernels, strides=strides,
                  features_per_stage=tuple(min(top, base * 2**i) for i in range(n)),
                  n_conv_per_stage_decoder=self.UNet_blocks_per_stage_decoder[:n - 1])  # type: ignore[attr-defined]
        per_stage = "n_blocks_per_stage" if "n_blocks_per_stage" in kw else "n_conv_per_stage"
        kw[per_stage] = self.UNet_blocks_per_stage_encoder[:n]  # type: ignore[attr-defined]
        return {**conf, "patch_size": patch, "batch_size": batch, "architecture": arch}

    def _verdict(self, conf: dict) -> Verdict:
        """swapseg's verdict on ``conf``'s step, traced once per patch, batch and network."""
        key = json.dumps([conf["patch_size"], conf["batch_size"], conf["architecture"]],
                         sort_keys=True, default=str)
        cache = self._swap_verdicts
        if key not in cache:
            n_in, n_out = self._channels()
            net = network_for(conf["architecture"], n_in, n_out)
            budget = int(self.UNet_vram_target_GB * _GIB)  # type: ignore[attr-defined]
            cache[key] = judge(net, conf["batch_size"], n_in, conf["patch_size"], budget,
                               self.swap_profile)
        return cache[key]

    def swap_configuration(self, conf: dict, spacing: Any, median_shape: Any) -> dict:
        """``conf`` (nnU-Net's choice) with the largest patch that passes, and the record."""
        median = [float(m) for m in median_shape]
        start = [int(round(m)) for m in median]
        if self.swap_max_patch:
            start = [min(s, c) for s, c in zip(start, self.swap_max_patch, strict=True)]
        chain = patch_chain(spacing, median, start, self.UNet_featuremap_min_edge_length)  # type: ignore[attr-defined]
        default_patch = [int(p) for p in conf["patch_size"]]
        min_bs = self.UNet_min_batch_size  # type: ignore[attr-defined]
        candidates = [self._with_topology(conf, p, s, k, conf["batch_size"]
                                          if p == default_patch else min_bs)
                      for p, s, k in chain]
        verdicts: dict[int, Verdict] = {}

        def passes(i: int) -> bool:
            if i not in verdicts:
                verdicts[i] = self._verdict(candidates[i])
            return verdicts[i].passes(self.swap_max_slowdown)

        best = largest_passing(len(candidates), passes)
        if best is None:
            raise InputError(
                f"no patch fits {self.UNet_vram_target_GB:g} GiB within a "  # type: ignore[attr-defined]
                f"{self.swap_max_slowdown:.0%} slowdown, down to {chain[-1][0]}")
        chosen = candidates[best]
        record = self.swap_record(conf, chosen, verdicts[best], spacing)
        return {**chosen, PLAN_KEY: record}

    def swap_record(self, default: dict, chosen: dict, verdict: Verdict, spacing: Any) -> dict:
        """What the plans file keeps next to the configuration: the plan, its predictions,
        and the rows of ``swapseg nnunet plan``'s table."""
        n_in, n_out = self._channels()
        median = default["median_image_size_in_voxels"]
        whole = [int(math.ceil(m / d) * d) for m, d in zip(median, divisor(chosen), strict=True)]
        rows = [self._row("nnU-Net default (no swapping)", default, n_in, n_out, keep_all=True),
                self._row("nnU-Net default, swapped", default, n_in, n_out),
                {"label": f"swap planner (<= {self.swap_max_slowdown:.0%} slower)",
                 **verdict.to_dict(),
                 "nnunet_estimate_bytes": nnunet_estimate_bytes(self, chosen, n_in, n_out)}]
        if whole != chosen["patch_size"]:
            props = patch_chain(spacing, median, whole, self.UNet_featuremap_min_edge_length)[0]  # type: ignore[attr-defined]
            rows.append(self._row("whole median image", self._with_topology(
                default, *props, self.UNet_min_batch_size), n_in, n_out))  # type: ignore[attr-defined]
        return {"planner": type(self).__name__, "device_profile": self.swap_profile,
                "budget_bytes": int(self.UNet_vram_target_GB * _GIB),  # type: ignore[attr-defined]
                "max_slowdown": self.swap_max_slowdown,
                "max_patch": list(self.swap_max_patch) if self.swap_max_patch else None,
                "patch_size": [int(p) for p in chosen["patch_size"]],
                "batch_size": int(chosen["batch_size"]),
                "plan": verdict.plan.to_dict() if verdict.plan else None,
                "predicted_peak_bytes": verdict.peak_bytes,
                "predicted_step_s": verdict.step_s, "predicted_slowdown": verdict.slowdown,
                "nnunet_patch_size": [int(p) for p in default["patch_size"]],
                "nnunet_batch_size": int(default["batch_size"]), "table": rows}

    def _row(self, label: str, conf: dict, n_in: int, n_out: int,
             keep_all: bool = False) -> dict:
        v = self._verdict(conf)
        row = {"label": label, **v.to_dict(),
               "nnunet_estimate_bytes": nnunet_estimate_bytes(self, conf, n_in, n_out)}
        if keep_all:  # nnU-Net's own run: everything kept, nothing swapped
            # keep-all fits exactly when the search chose it (it is the fastest plan)
            fits = v.plan is not None and v.plan.swap is None and v.plan.recompute is None
            row.update(fits=fits, plan=None, predicted_peak_bytes=v.keep_all_peak_bytes,
                       predicted_step_s=v.keep_all_step_s, predicted_slowdown=0.0)
        return row


class nnUNetPlannerSwap(SwapPlannerMixin, ExperimentPlanner):
    """nnU-Net's default planner (plain U-Net), patch sized with swapping."""

    swap_plans_name = "nnUNetPlansSwap"


class nnUNetPlannerResEncMSwap(SwapPlannerMixin, nnUNetPlannerResEncM):
    """The ResEnc M preset (8 GB), patch sized with swapping."""

    swap_plans_name = "nnUNetPlansSwapResEncM"


class nnUNetPlannerResEncLSwap(SwapPlannerMixin, nnUNetPlannerResEncL):
    """The ResEnc L preset (24 GB), patch sized with swapping."""

    swap_plans_name = "nnUNetPlansSwapResEncL"


class nnUNetPlannerResEncXLSwap(SwapPlannerMixin, nnUNetPlannerResEncXL):
    """The ResEnc XL preset (40 GB), patch sized with swapping."""

    swap_plans_name = "nnUNetPlansSwapResEncXL"


PLANNERS: dict[str, type] = {c.__name__: c for c in (
    nnUNetPlannerSwap, nnUNetPlannerResEncMSwap, nnUNetPlannerResEncLSwap,
    nnUNetPlannerResEncXLSwap)}
