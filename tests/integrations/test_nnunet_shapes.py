"""The whole-image patch of nnU-Net plans: hand-worked roundings (no nnU-Net needed)."""

from __future__ import annotations

import pytest

from swapseg.errors import InputError
from swapseg.integrations.nnunet.shapes import divisor, full_image_patch, full_image_plans


def _conf(median: list[float], strides: list, patch: list[int] | None = None) -> dict:
    return {"patch_size": patch or [8] * len(median), "median_image_size_in_voxels": median,
            "architecture": {"arch_kwargs": {"strides": strides}}}


def test_median_rounds_up_to_the_product_of_strides() -> None:
    # BraTS-like: 6 stages, strides 1 then 2 (x5) on every axis -> divisor 32
    conf = _conf([138.5, 169.0, 137.0], [1, 2, 2, 2, 2, 2])
    assert divisor(conf) == [32, 32, 32]
    assert full_image_patch(conf) == [160, 192, 160]  # ceil(138.5/32)=5, 169/32->6, 137/32->5


def test_anisotropic_strides_round_each_axis_by_its_own_divisor() -> None:
    conf = _conf([19.5, 24.0, 23.0], [[1, 1, 1], [1, 2, 2], [2, 2, 2]])
    assert divisor(conf) == [2, 4, 4]
    assert full_image_patch(conf) == [20, 24, 24]


def test_plans_copy_changes_only_the_patch_and_follows_inheritance() -> None:
    parent = _conf([20.0, 24.0, 23.0], [[1, 1, 1], [2, 2, 2]], patch=[12, 16, 16])
    plans = {"configurations": {"3d_fullres": parent,
                                "3d_big": {"inherits_from": "3d_fullres", "batch_size": 1}}}
    out = full_image_plans(plans, "3d_big")
    assert out["configurations"]["3d_big"]["patch_size"] == [20, 24, 24]
    assert out["configurations"]["3d_fullres"]["patch_size"] == [12, 16, 16]
    assert "patch_size" not in plans["configurations"]["3d_big"]  # the input is not modified


def test_missing_configuration_or_median_is_an_input_error() -> None:
    with pytest.raises(InputError, match="'2d' is not in the plans"):
        full_image_plans({"configurations": {"3d_fullres": {}}}, "2d")
    conf = _conf([], [1, 2])
    conf["median_image_size_in_voxels"] = None
    with pytest.raises(InputError, match="median_image_size_in_voxels"):
        full_image_patch(conf)
