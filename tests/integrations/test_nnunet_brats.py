"""Real BraTS cases end to end on the CPU: nnU-Net's BraTS conversion (6x coarser), the swap
planner at a memory target small enough that it must swap, nnU-Net's preprocessing, the
debug trainer reading the plan from the plans file, prediction of a held-out case with the
planned patch, and nnU-Net's evaluation. Skipped without ../shared/data/brats18-sample."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("nnunetv2")

from swapseg.integrations.nnunet.dataset import convert_brats
from tests.integrations.test_nnunet_flow import _run, _tool

# realdata, not slow: it is part of the default run (skipped without the sample)
pytestmark = pytest.mark.realdata

SAMPLE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "brats18-sample"
DATASET_ID = 505
NAME = f"Dataset{DATASET_ID}_BraTSCoarse"
TRAINER = "nnUNetTrainerSwap_debug"
PLANS = "nnUNetPlansSwap"
TARGET_GB = "0.03"  # the coarse network's keep-all step does not fit: the plan swaps


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> dict:
    if not SAMPLE.is_dir():
        pytest.skip(f"{SAMPLE} is absent")
    cases = sorted(p for p in SAMPLE.iterdir() if p.is_dir())[:6]
    root = tmp_path_factory.mktemp("brats")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "nnUNet_def_n_proc": "1",
           "nnUNet_compile": "false"}
    env.update({f"nnUNet_{k}": str(root / k) for k in ("raw", "preprocessed", "results")})
    env.pop("SWAPSEG_MEMORY_BUDGET", None)  # the budget is the plans file's
    raw = convert_brats(cases[:5], root / "raw", DATASET_ID, 6, test_cases=cases[5:])
    nnunet = [sys.executable, "-m", "swapseg.cli", "nnunet"]
    _run([*nnunet, "plan-experiment", str(DATASET_ID), "-gpu_memory_target", TARGET_GB], env)
    _run([_tool("nnUNetv2_preprocess"), "-d", str(DATASET_ID), "-plans_name", PLANS,
          "-c", "3d_fullres", "-np", "1"], env)
    # augment in the training process (0 breaks planning's torch.set_num_threads)
    env["nnUNet_n_proc_DA"] = "0"
    train = _run([*nnunet, "train", str(DATASET_ID), "3d_fullres", "0", "-p", PLANS,
                  "-tr", TRAINER, "--device", "cpu"], env)
    _run([*nnunet, "predict", "-i", str(raw / "imagesTs"), "-o", str(root / "pred"),
          "-d", str(DATASET_ID), "-c", "3d_fullres", "-f", "0", "-p", PLANS, "-tr", TRAINER,
          "--device", "cpu", "--disable_tta"], env)
    model = root / "results" / NAME / f"{TRAINER}__{PLANS}__3d_fullres"
    _run([_tool("nnUNetv2_evaluate_folder"), str(raw / "labelsTs"), str(root / "pred"),
          "-djfile", str(model / "dataset.json"), "-pfile", str(model / "plans.json"),
          "-np", "1"], env)
    return {"root": root, "raw": raw, "model": model, "train": train, "case": cases[5].name}


def test_the_trainer_runs_the_plans_files_swap_plan(flow: dict) -> None:
    plans = json.loads((flow["model"] / "plans.json").read_text())
    rec = plans["configurations"]["3d_fullres"]["swapseg"]
    assert rec["plan"]["swap"] is not None  # the target is too small to keep everything
    plan = json.loads((flow["model"] / "swapseg_plan.json").read_text())
    assert plan["source"] == "plans file" and plan["plan"]["swap"]["tier"] == "disk"
    assert plan["input_shape"][2:] == rec["patch_size"]
    assert "(plans file)" in flow["train"] and "after the first step" in flow["train"]
    stats = json.loads((flow["model"] / "fold_0" / "swapseg_stats.json").read_text())
    assert stats["steps"] == 6 and stats["swapped"] > 0 and stats["bytes_out"] > 0


def test_the_held_out_case_is_predicted_and_evaluated(flow: dict) -> None:
    pred = flow["root"] / "pred" / f"{flow['case']}.nii.gz"
    assert pred.is_file()
    summary = json.loads((flow["root"] / "pred" / "summary.json").read_text())
    assert len(summary["metric_per_case"]) == 1
    regions = summary["mean"]  # keyed by nnU-Net's region tuples
    assert len(regions) == 3 and all("Dice" in m for m in regions.values())
