"""The README's nnU-Net flow on the CPU: synthetic raw data, nnU-Net's plan and preprocess,
then two debug epochs with swapping (about two minutes on a 2-core CPU)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("nnunetv2")

DATASET_ID = 503
TRAINER = "nnUNetTrainerSwap_debug"
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = BIN / name if (BIN / name).exists() else shutil.which(name)
    assert path, f"{name} is installed with nnunetv2 but not found"
    return str(path)


def _run(cmd: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{cmd[:4]} failed ({proc.returncode}):\n{out[-3000:]}"
    return out


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("nnunet")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "nnUNet_def_n_proc": "1",
           "nnUNet_compile": "false", "SWAPSEG_MEMORY_BUDGET": "50MiB",
           "SWAPSEG_DEVICE_PROFILE": "a100-pcie4"}
    env.update({f"nnUNet_{k}": str(root / k) for k in ("raw", "preprocessed", "results")})
    swapseg = [sys.executable, "-m", "swapseg.cli"]
    env["nnUNet_extTrainer"] = _run([*swapseg, "nnunet", "trainers"], env).strip()
    _run([*swapseg, "nnunet", "synth", str(DATASET_ID), "--cases", "5",
          "--shape", "32x28x24"], env)
    _run([_tool("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "3d_fullres",
          "-np", "1", "-npfp", "1"], env)
    # augment in the training process (0 breaks preprocessing's torch.set_num_threads)
    return env | {"nnUNet_n_proc_DA": "0"}


def _model_folder(env: dict[str, str]) -> Path:
    return (Path(env["nnUNet_results"]) / f"Dataset{DATASET_ID}_SynthBraTS"
            / f"{TRAINER}__nnUNetPlans__3d_fullres")


def _check_run(env: dict[str, str]) -> None:
    model = _model_folder(env)
    fold = model / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    assert (model / "plans.json").is_file()
    plan = json.loads((model / "swapseg_plan.json").read_text())  # next to plans.json
    assert plan["budget_bytes"] == 50 * 2**20 and plan["plan"]["swap"] is not None
    stats = json.loads((fold / "swapseg_stats.json").read_text())
    assert stats["steps"] == 2 * 3 and stats["swapped"] > 0 and stats["bytes_out"] > 0
    log = "\n".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    epochs = [line for line in log.splitlines() if "swapseg: swapped" in line]
    assert len(epochs) == 2 and not any("swapped 0 tensors" in line for line in epochs)
    assert (fold / "validation" / "summary.json").is_file()


def test_swapseg_nnunet_train_runs_the_debug_trainer_with_swapping(
        preprocessed: dict[str, str]) -> None:
    _run([sys.executable, "-m", "swapseg.cli", "nnunet", "train", str(DATASET_ID), "3d_fullres",
          "0", "-tr", TRAINER, "--device", "cpu"], preprocessed)
    _check_run(preprocessed)


def test_nnunetv2_train_finds_the_trainer_where_torchvision_loads(
        preprocessed: dict[str, str]) -> None:
    probe = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("torchvision does not load here (CPU torch): nnUNetv2_train cannot run")
    shutil.rmtree(_model_folder(preprocessed), ignore_errors=True)
    _run([_tool("nnUNetv2_train"), str(DATASET_ID), "3d_fullres", "0", "-tr", TRAINER,
          "-device", "cpu"], preprocessed)
    _check_run(preprocessed)


def test_unpreprocessed_dataset_is_one_line_exit_2(preprocessed: dict[str, str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "swapseg.cli", "nnunet", "train", "999",
                           "3d_fullres", "0", "--device", "cpu"], env=preprocessed,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "999" in proc.stderr, proc.stderr
