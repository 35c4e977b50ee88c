"""nnUNetTrainerSwap's step: bitwise equal to nnU-Net's own, and its plan from the budget."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("nnunetv2")
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

from swapseg.integrations._plan import MemoryPlan, SwapPolicy
from swapseg.integrations.nnunet import TRAINER_NAMES, trainers_folder
from swapseg.integrations.nnunet.trainer import (
    BUDGET_ENV,
    PROFILE_ENV,
    TIER_ENV,
    nnUNetTrainerSwap,
    nnUNetTrainerSwapFullImage,
    plan_line,
)
from swapseg.integrations.steps import StepSwapper

PLANS = json.loads((Path(__file__).parent / "tiny_nnunet_plans.json").read_text())
DATASET = {"channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"},
           "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
                      "enhancing tumor": 3},
           "regions_class_order": [1, 2, 3], "numTraining": 5, "file_ending": ".nii.gz"}


@pytest.fixture
def nnunet_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"nnUNet_{name}", str(tmp_path / name))
    data = tmp_path / "preprocessed" / PLANS["dataset_name"] / "nnUNetPlans_3d_fullres"
    data.mkdir(parents=True)
    (data / "case.b2nd").touch()  # initialize() infers the dataset class from file endings
    monkeypatch.setenv(PROFILE_ENV, "a100-pcie4")  # no local calibration step in tests
    return tmp_path


def _trainer(cls: type, seed: int = 0) -> nnUNetTrainer:
    torch.manual_seed(seed)
    plans = copy.deepcopy(PLANS) | {"continue_training": False}  # nnU-Net pops the flag
    t = cls(plans=plans, configuration="3d_fullres", fold=0, dataset_json=DATASET,
            device=torch.device("cpu"))
    t.initialize()
    return t


def _batch(seed: int, patch: tuple[int, ...] = (12, 16, 16)) -> dict:
    g = torch.Generator().manual_seed(seed)
    data = torch.randn((2, 4, *patch), generator=g)  # (B, C, D, H, W)
    target = [(torch.rand((2, 3, *(s // f for s in patch)), generator=g) > 0.7).float()
              for f in (1, 2, 4)]  # deep supervision: full, 1/2, 1/4 resolution regions
    return {"data": data, "target": target}


def test_swap_step_equals_nnunet_step_bitwise(nnunet_env: Path) -> None:
    stock, swap = _trainer(nnUNetTrainer), _trainer(nnUNetTrainerSwap, seed=1)
    swap.network.load_state_dict(stock.network.state_dict())
    swap.swapper = StepSwapper(MemoryPlan(swap=SwapPolicy(prefetch=2)))
    for step in range(3):
        a, b = stock.train_step(_batch(step)), swap.train_step(_batch(step))
        assert a["loss"].tobytes() == b["loss"].tobytes(), f"loss differs at step {step}"
        for (name, p), q in zip(stock.network.named_parameters(), swap.network.parameters(),
                                strict=True):
            if p.grad is None:  # a head the deep-supervision loss does not use
                assert q.grad is None, name
            else:
                assert torch.equal(p.grad, q.grad), f"grad of {name} differs at step {step}"
            assert torch.equal(p, q), f"{name} differs after step {step}"
    assert sum(p.grad is not None for p in swap.network.parameters()) > 20
    s = swap.swapper.stats
    assert s.steps == 3 and s.swapped > 0 and s.bytes_in == s.bytes_out > 0
    # the comparison can fail: a different batch gives a different loss
    other = _trainer(nnUNetTrainer).train_step(_batch(7))
    assert other["loss"].tobytes() != a["loss"].tobytes()


def test_budget_picks_the_plan(nnunet_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    t = _trainer(nnUNetTrainerSwap)
    monkeypatch.setenv(BUDGET_ENV, "64GiB")
    roomy = t.choose_swap_plan()
    assert roomy.swap is None and roomy.recompute is None  # fits as it is: change nothing
    assert t.swap_budget_bytes == 64 * 2**30
    monkeypatch.setenv(BUDGET_ENV, "2MiB")  # keep-all needs about 2.2 MB here
    tight = t.choose_swap_plan()
    assert tight.swap is not None or tight.recompute is not None
    # the trace ran on a CPU copy: the trainer's network still has real parameters
    assert all(type(p) is torch.nn.Parameter for p in t.network.parameters())


def test_local_profile_calibrates_on_the_deep_supervision_network(
        nnunet_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PROFILE_ENV)  # measure this machine: one real step of the network
    monkeypatch.setenv(BUDGET_ENV, "2MiB")
    t = _trainer(nnUNetTrainerSwap)
    plan = t.choose_swap_plan()
    assert plan.swap is not None or plan.recompute is not None


def test_full_image_trainer_stops_with_the_missing_bytes(
        nnunet_env: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    t = _trainer(nnUNetTrainerSwapFullImage)
    assert list(t.configuration_manager.patch_size) == [20, 24, 24]  # median 20x24x23, /4
    monkeypatch.setenv(BUDGET_ENV, "64KiB")
    with pytest.raises(SystemExit) as exc:
        t.on_train_start()  # before any data loader starts
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bytes) missing" in err[0], err
    assert t.dataloader_train is None


@pytest.mark.parametrize("value, words", [
    ("12 parsecs", "SWAPSEG_MEMORY_BUDGET: not a memory size"),
    ("6", "SWAPSEG_MEMORY_BUDGET: memory size '6' has no unit: write 6GiB"),  # not 6 bytes
])
def test_bad_budget_is_one_line(nnunet_env: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str], value: str,
                                words: str) -> None:
    t = _trainer(nnUNetTrainerSwap)
    monkeypatch.setenv(BUDGET_ENV, value)
    with pytest.raises(SystemExit):
        t.choose_swap_plan()
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1, err


def test_nnunet_finds_the_trainers_in_the_ext_folder() -> None:
    folder = str(trainers_folder())
    for name in TRAINER_NAMES:  # the lookup nnU-Net runs for each nnUNet_extTrainer path
        cls = recursive_find_python_class(folder, name, None, base_folder=folder,
                                          cleanup_imports_from_base_folder=True)
        assert cls is not None and issubclass(cls, nnUNetTrainer) and cls.__name__ == name


def _recorded(plan: MemoryPlan, patch: list[int]) -> dict:
    plans = copy.deepcopy(PLANS)
    plans["configurations"]["3d_fullres"]["swapseg"] = {
        "plan": plan.to_dict(), "budget_bytes": 3 * 2**20, "patch_size": patch,
        "batch_size": 2, "device_profile": "a100-pcie4", "predicted_peak_bytes": 2**20,
        "predicted_step_s": 0.5, "predicted_slowdown": 0.05}
    return plans


def test_the_plan_comes_from_the_plans_file(nnunet_env: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    recorded = MemoryPlan(swap=SwapPolicy(prefetch=3, tier="auto"), name="recorded")
    monkeypatch.setattr(nnUNetTrainerSwap, "_searched_plan", None)  # must not be reached
    t = nnUNetTrainerSwap(plans=_recorded(recorded, [12, 16, 16]) | {"continue_training": False},
                          configuration="3d_fullres", fold=0, dataset_json=DATASET,
                          device=torch.device("cpu"))
    t.initialize()
    plan = t.choose_swap_plan()
    assert plan == recorded.concrete("cpu") and plan.swap.tier == "disk"  # frees CPU memory
    assert t.swap_budget_bytes == 3 * 2**20 and t.swap_prediction["source"] == "plans file"
    monkeypatch.setenv(TIER_ENV, "host")  # where pinned memory is scarce (Windows)
    assert t.choose_swap_plan().swap.tier == "host"
    line = plan_line(plan, t.swap_budget_bytes, t.swap_prediction, t.swap_input_shape())
    assert line == ("swapseg: plan recorded, swap to disk for input 2x4x12x16x16; predicted "
                    "peak 0.000977 GiB of 0.00293 GiB, step 0.5 s (+5.0%) on a100-pcie4 "
                    "(plans file)")


def test_a_plan_for_another_patch_or_a_set_budget_is_planned_anew(
        nnunet_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def trainer(patch: list[int]) -> nnUNetTrainerSwap:
        plans = _recorded(MemoryPlan(swap=SwapPolicy(prefetch=3), name="recorded"), patch)
        t = nnUNetTrainerSwap(plans=plans | {"continue_training": False},
                              configuration="3d_fullres", fold=0, dataset_json=DATASET,
                              device=torch.device("cpu"))
        t.initialize()
        return t
    assert trainer([12, 16, 16])._recorded_plan() is not None
    assert trainer([20, 24, 24])._recorded_plan() is None  # planned for another patch
    monkeypatch.setenv(BUDGET_ENV, "64GiB")  # the user asks for another budget
    t = trainer([12, 16, 16])
    assert t._recorded_plan() is None
    assert t.choose_swap_plan().name == "keep-all"
    assert t.swap_prediction["source"] == "planned at start"


def test_a_cpu_plan_swaps_to_disk(nnunet_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BUDGET_ENV, "2MiB")
    plan = _trainer(nnUNetTrainerSwap).choose_swap_plan()
    assert plan.swap is not None and plan.swap.tier == "disk"  # host memory frees nothing


def test_progress_lines_when_the_log_is_not_a_terminal(
        nnunet_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t = _trainer(nnUNetTrainerSwap)
    t.swapper = StepSwapper(MemoryPlan(swap=SwapPolicy(prefetch=2, tier="disk")))
    t.swap_prediction = {"predicted_peak_bytes": 2**20}
    t.num_iterations_per_epoch = 3
    for step in range(3):
        t.train_step(_batch(step))
    out = capsys.readouterr().out
    assert out.count("saved-tensor peak") == 1 and "(predicted peak 0.000977 GiB)" in out
    assert [f"step {i}/3" in out for i in (1, 2, 3)] == [True] * 3
