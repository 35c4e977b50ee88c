"""The swap planner through nnU-Net's own tools: a larger patch than nnU-Net's default at
the same memory target, plans that nnUNetv2_preprocess accepts, and a dry-run table whose
numbers are the planner's."""

from __future__ import annotations

import json
import math
import os
import sys

import pytest

pytest.importorskip("nnunetv2")
import torch

from swapseg.cli import main
from swapseg.errors import InputError
from swapseg.integrations._plan import plan_search
from swapseg.integrations.nnunet.fit import (
    Verdict,
    ds_loss,
    largest_passing,
    network_for,
    patch_chain,
)
from tests.integrations.test_nnunet_flow import _run, _tool

DATASET_ID = 504
NAME = f"Dataset{DATASET_ID}_SynthBraTS"
TARGET_GB = 0.05  # small enough that nnU-Net shrinks the 32x35x35 median image


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("nnunet_plan")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "nnUNet_def_n_proc": "1"}
    env.update({f"nnUNet_{k}": str(root / k) for k in ("raw", "preprocessed", "results")})
    swapseg = [sys.executable, "-m", "swapseg.cli", "nnunet"]
    _run([*swapseg, "synth", str(DATASET_ID), "--cases", "5", "--shape", "48x40x40"], env)
    out = _run([*swapseg, "plan-experiment", str(DATASET_ID), "-gpu_memory_target",
                str(TARGET_GB)], env)  # extracts the fingerprint first
    assert "plans identifier: nnUNetPlansSwap" in out
    _run([_tool("nnUNetv2_plan_experiment"), "-d", str(DATASET_ID), "-gpu_memory_target",
          str(TARGET_GB)], env)  # nnU-Net's default planner: nnUNetPlans.json
    _run([_tool("nnUNetv2_preprocess"), "-d", str(DATASET_ID), "-plans_name",
          "nnUNetPlansSwap", "-c", "3d_fullres", "-np", "1"], env)
    table = _run([*swapseg, "plan", str(DATASET_ID), "-c", "3d_fullres", "--gpu-memory",
                  f"{TARGET_GB}GiB", "--json", str(root / "table.json")], env)
    pre = root / "preprocessed" / NAME
    return {"pre": pre, "table": table, "record": json.loads((root / "table.json").read_text()),
            "default": json.loads((pre / "nnUNetPlans.json").read_text()),
            "swap": json.loads((pre / "nnUNetPlansSwap.json").read_text())}


def _conf(plans: dict) -> dict:
    return plans["configurations"]["3d_fullres"]


def test_swap_plans_have_a_larger_patch_than_nnunets_default(planned: dict) -> None:
    default, swap = _conf(planned["default"]), _conf(planned["swap"])
    assert math.prod(swap["patch_size"]) > math.prod(default["patch_size"])
    assert planned["swap"]["plans_name"] == "nnUNetPlansSwap"
    assert planned["swap"]["experiment_planner_used"] == "nnUNetPlannerSwap"
    rec = swap["swapseg"]
    assert rec["nnunet_patch_size"] == default["patch_size"]
    assert rec["nnunet_batch_size"] == default["batch_size"]
    assert rec["budget_bytes"] == int(TARGET_GB * 2**30)
    assert rec["plan"]["swap"] is not None  # the larger patch fits only by swapping
    assert rec["predicted_peak_bytes"] <= rec["budget_bytes"] * 0.9  # the planner's margin
    assert 0 <= rec["predicted_slowdown"] <= 0.15
    # every patch side is a multiple of the network's strides along it
    strides = swap["architecture"]["arch_kwargs"]["strides"]
    assert all(p % math.prod(s[i] for s in strides) == 0
               for i, p in enumerate(swap["patch_size"]))


def test_nnunet_preprocess_accepts_the_swap_plans(planned: dict) -> None:
    data = planned["pre"] / "nnUNetPlansSwap_3d_fullres"
    assert len(list(data.glob("*.pkl"))) == 5  # one properties file per case


def test_dry_run_table_is_the_planners_numbers(planned: dict) -> None:
    assert planned["record"]["plan"] == _conf(planned["swap"])["swapseg"]["plan"]
    budget = int(TARGET_GB * 2**30)
    for label, plans in (("swap planner", planned["swap"]),
                         ("nnU-Net default", planned["default"])):
        conf = _conf(plans)
        row = [r for r in planned["record"]["table"] if r["label"].startswith(label)
               and "no swapping" not in r["label"]][0]
        assert row["patch_size"] == conf["patch_size"] and row["batch_size"] == conf["batch_size"]
        ev = plan_search(network_for(conf["architecture"], 4, 4),
                         (conf["batch_size"], 4, *conf["patch_size"]), "a100-pcie4",
                         budget_bytes=budget, loss_fn=ds_loss, autocast_dtype=torch.float16,
                         tier="cuda", require_fit=False)
        assert ev.fits and row["plan"]["name"] == ev.plan.name
        assert row["predicted_peak_bytes"] == ev.predicted.peak_bytes
        assert row["predicted_step_s"] == pytest.approx(ev.predicted.step_s, rel=1e-12)
        assert row["keep_all_peak_bytes"] == ev.keep_all.peak_bytes
        if label == "nnU-Net default":  # the same step with nothing swapped
            kept = planned["record"]["table"][0]
            assert kept["label"] == "nnU-Net default (no swapping)" and kept["plan"] is None
            assert kept["predicted_peak_bytes"] == ev.keep_all.peak_bytes
            assert not kept["fits"]
    assert "swap planner" in planned["table"] and "nnU-Net GiB" in planned["table"]


def test_largest_passing_finds_the_first_passing_index() -> None:
    for n in range(1, 9):
        for first in range(n + 1):
            calls: list[int] = []

            def passes(i: int, first: int = first, calls: list[int] = calls) -> bool:
                calls.append(i)
                return i >= first
            assert largest_passing(n, passes) == (first if first < n else None)
            assert len(calls) <= 1 + math.ceil(math.log2(n)) + 1
    assert largest_passing(0, lambda i: True) is None


def test_patch_chain_shrinks_and_stays_divisible() -> None:
    chain = patch_chain([1.0, 1.0, 1.0], [77.0, 93.0, 61.0], [77, 93, 61], 4)
    volumes = [math.prod(p) for p, _, _ in chain]
    assert len(chain) > 3 and volumes == sorted(volumes, reverse=True)
    assert len(set(volumes)) == len(volumes)
    for patch, strides, _ in chain:
        assert all(p % math.prod(s[i] for s in strides) == 0 for i, p in enumerate(patch))
        assert min(patch) >= 8


def test_a_verdict_has_a_plan_exactly_when_it_fits() -> None:
    with pytest.raises(InputError, match="exactly when it fits"):
        Verdict((8, 8, 8), 2, True, 0.0, None, 1, 1.0, 1, 1.0)


@pytest.mark.parametrize("argv, message", [
    (["nnunet", "plan-experiment", "1000"], "1..999"),
    (["nnunet", "plan", "Dataset12x"], "DatasetXXX_Name"),
])
def test_bad_dataset_is_one_line_exit_2(argv: list[str], message: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
