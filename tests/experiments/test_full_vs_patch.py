"""full-vs-patch: defaults, paired statistics by hand, configs, and end-to-end runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from swapseg.cli import main
from swapseg.devices import AVAILABLE_ENV
from swapseg.errors import InputError
from swapseg.experiments.full_vs_patch import (
    default_patch,
    default_patches_per_volume,
    mode_configs,
)
from swapseg.experiments.stats import paired
from swapseg.training.config import brats_full, tiny
from swapseg.training.runlog import read_log


def test_default_patch_follows_the_papers_ratio() -> None:
    assert default_patch((192, 192, 192), 5) == 128   # the paper's setting
    assert default_patch((96, 96, 96), 5) == 64
    assert default_patch((64, 64, 64), 5) == 32       # 42.7 rounded down to 16s
    assert default_patch((48, 48, 48), 4) == 32
    assert default_patch((16, 16, 16), 5) == 16       # never below one divisor
    assert default_patches_per_volume((192,) * 3, 128) == 4   # 3.375 rounded up
    assert default_patches_per_volume((64,) * 3, 32) == 8
    assert default_patches_per_volume((32,) * 3, 32) == 1


def test_paired_statistics_by_hand() -> None:
    s = paired([0.9, 0.8, 0.7, 0.6], [0.8, 0.8, 0.5, 0.7], [0, 0, 1, 1])
    # d = [0.1, 0, 0.2, -0.1]: mean 0.05, sample std sqrt(0.05 / 3)
    sd = math.sqrt(0.05 / 3)
    assert s["n"] == 4 and s["mean_diff"] == pytest.approx(0.05)
    assert s["std_diff"] == pytest.approx(sd)
    half = 3.182446305284263 * sd / 2  # t(0.975, 3) * sd / sqrt(4)
    assert s["ci95"] == pytest.approx([0.05 - half, 0.05 + half])
    assert s["full_better"] == 2 and s["patch_better"] == 1
    assert s["fold_mean_diffs"] == pytest.approx([0.05, 0.05])
    assert s["fold_std"] == pytest.approx(0.0)
    assert 0.0 < s["wilcoxon_p"] <= 1.0
    dist = paired([3.0, 1.0], [2.0, 2.0], [0, 0], higher_is_better=False)  # HD95: lower wins
    assert dist["full_better"] == 1 and dist["patch_better"] == 1
    dist = paired([1.0, 1.0], [2.0, 2.0], [0, 0], higher_is_better=False)
    assert dist["full_better"] == 2 and dist["mean_diff"] == -1.0
    nan = paired([float("nan"), 0.5], [0.2, 0.5], [0, 1])
    assert nan["n"] == 1 and nan["std_diff"] is None and nan["wilcoxon_p"] is None


def test_mode_configs_share_the_protocol(tmp_path: Path) -> None:
    from swapseg.offload.policy import MemoryPlan, SwapPolicy

    base = brats_full(data="d", out="o", shape=(64, 64, 64), max_epochs=7, early_stop=3,
                      device="cpu")
    c = mode_configs(base, tmp_path, 2, plan=MemoryPlan(swap=SwapPolicy()))
    full, patch = c["full"].to_dict(), c["patch"].to_dict()
    differ = {k for k in full if full[k] != patch[k]}
    assert differ == {"mode", "out", "patch", "patches_per_volume", "batch_size", "plan"}
    assert c["full"].batch == 1 and c["patch"].batch == 2
    assert c["patch"].patch == 32 and c["patch"].patches_per_volume == 8
    assert c["full"].fold == c["patch"].fold == 2 and c["patch"].plan is None
    assert c["full"].swap == SwapPolicy()


def test_full_plan_of_each_swap_choice(tmp_path: Path, monkeypatch) -> None:
    from swapseg.experiments.full_vs_patch import full_plan
    from swapseg.offload.policy import SwapPolicy

    # all: every activation to the tier that frees a CPU's memory (a host copy frees none)
    assert full_plan("all", None, "cpu")[0].swap == SwapPolicy(tier="disk")
    assert full_plan("none", None, "cpu") == (None, None)
    monkeypatch.setenv(AVAILABLE_ENV, "3GiB")
    assert full_plan("auto", None, "cpu") == (None, 3 * 2**30)  # the device's memory
    assert full_plan("auto", 2**30, "cpu") == (None, 2**30)  # planned once by the caller
    with pytest.raises(InputError, match="only used with --swap auto"):
        full_plan("all", 2**30, "cpu")
    with pytest.raises(InputError, match="--swap some: not none, all, auto or an existing"):
        full_plan("some", None, "cpu")
    # a policy file, as `swapseg train --swap FILE`, or a MemoryPlan as `swapseg plan` writes
    policy = tmp_path / "policy.json"
    policy.write_text('{"exclude": ["decoder.*"], "prefetch": 20}')
    given = full_plan(str(policy), None, "cpu")[0].swap
    assert tuple(given.exclude) == ("decoder.*",) and given.prefetch == 20
    policy.write_text('{"name": "p", "swap": null, "recompute": {"scopes": ["decoder"]}}')
    assert full_plan(str(policy), None, "cpu")[0].recompute.scopes == ("decoder",)
    policy.write_text('{"prefetch": 20, "typo": 1}')
    with pytest.raises(InputError, match="unknown SwapPolicy field"):
        full_plan(str(policy), None, "cpu")


def test_swap_auto_is_planned_once_for_every_fold(tmp_path: Path, monkeypatch) -> None:
    from swapseg.experiments.full_vs_patch import run_full_vs_patch
    from swapseg.training import planning

    calls = []
    real = planning.plan_memory
    monkeypatch.setattr(planning, "plan_memory",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    data = _synth(tmp_path / "data", 4, 16)
    base = tiny(data=str(data), out=str(tmp_path / "exp"), folds=3, max_epochs=1)
    run_full_vs_patch(base, tmp_path / "exp", swap="auto", memory_budget=64 * 2**20,
                      run_folds=2, overlays=0, progress=False, echo=lambda _: None)
    assert calls == [1]
    rec = json.loads((tmp_path / "exp" / "plan.json").read_text())
    for fold in (0, 1):
        cfg = json.loads((tmp_path / "exp" / "full" / f"fold{fold}" / "config.json").read_text())
        assert cfg["plan"] == rec["plan"]
        patch = json.loads((tmp_path / "exp" / "patch" / f"fold{fold}" / "config.json"
                            ).read_text())
        assert patch["plan"] is None
    assert sorted(m["fold"] for m in rec["measured"]) == [0, 1]  # the full arm's first steps


def _synth(root: Path, n: int, side: int) -> Path:
    from swapseg.data.synthetic import synthesize

    synthesize(root, n, (side,) * 3, 0)
    return root


def _check_outputs(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    for mode in ("full", "patch"):
        for key in ("dice", "sensitivity", "specificity", "hd95_mm"):
            assert set(summary["modes"][mode][key]) == {"WT", "TC", "ET"}
        t = summary["time"][mode]
        assert t["iterations_per_epoch"] and t["epoch_s_mean"] > 0 and t["total_s_mean"] > 0
    assert set(summary["paired_full_minus_patch"]["dice"]) == {"WT", "TC", "ET"}
    assert summary["time"]["ratios"]["epoch_s_patch_over_full"] > 0
    assert summary["environment"]["torch"]
    assert (out / "boxplot_dice.png").stat().st_size > 1000
    assert (out / "curves.png").stat().st_size > 1000
    assert "![Learning curves](curves.png)" in (out / "report.md").read_text()
    assert "| dice | WT |" in (out / "report.md").read_text()
    assert summary["overlays"] and all((out / "overlays" / f"{c}.png").is_file()
                                       for c in summary["overlays"])
    return summary


def test_smoke_cli_end_to_end_and_reuse(tmp_path: Path, capsys) -> None:
    data = _synth(tmp_path / "data", 4, 16)
    out = tmp_path / "exp"
    argv = ["experiment", "full-vs-patch", "--data", str(data), "--out", str(out),
            "--folds", "3", "--run-folds", "1", "--epochs", "3", "--time-limit", "1e-3",
            "--shape", "16", "--base-filters", "4", "--depth", "3",
            "--patches-per-volume", "4", "--workers", "0", "--device", "cpu",
            "--overlays", "1", "--no-progress"]
    assert main(argv) == 0
    summary = _check_outputs(out)
    # the time limit ends every run after its first epoch, before the 3-epoch cap
    for mode in ("full", "patch"):
        assert summary["time"][mode]["epochs"] == [1]
        assert summary["time"][mode]["stop_reason"] == ["time_limit"]
    assert summary["settings"]["max_train_s"] == 1e-3
    assert summary["time"]["full"]["optimizer_steps"] == [1]  # 1 epoch x 1 step
    assert summary["time"]["patch"]["optimizer_steps"] == [2]
    assert summary["time"]["ratios"]["optimizer_steps_patch_over_full"] == 2.0
    # best epoch 1: the time to it is that epoch's seconds, as logged
    row = read_log(out / "full" / "fold0" / "log.csv")[0]
    assert summary["time"]["full"]["best_s"] == [float(row["epoch_s"])]
    assert summary["settings"]["patch"] == 8  # 2/3 of 16, rounded down to a multiple of 4
    # fold 0 of 4 cases: 2 test, 1 validation, 1 training case
    assert summary["time"]["patch"]["iterations_per_epoch"] == [2]  # 4 patches / batch 2
    assert summary["time"]["full"]["iterations_per_epoch"] == [1]
    assert summary["modes"]["full"]["n_cases"] == 2
    assert "patch/full time" in capsys.readouterr().out
    mtime = (out / "full" / "fold0" / "checkpoints" / "best.pt").stat().st_mtime
    assert main(argv) == 0  # same settings: the finished fold is reused, not retrained
    assert "reusing" in capsys.readouterr().out
    assert (out / "full" / "fold0" / "checkpoints" / "best.pt").stat().st_mtime == mtime
    bad = argv.copy()
    bad[bad.index("--out") + 1] = str(tmp_path / "bad")
    bad[bad.index("--folds") + 1] = "5"
    assert main(bad) == 2  # 4 cases, 5 folds: refused before anything is written
    assert "cannot be split into 5 folds" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    argv[argv.index("--epochs") + 1] = "2"
    assert main(argv) == 2  # other settings in the same folder: refused, nothing lost
    assert "other settings" in capsys.readouterr().err


@pytest.mark.slow
def test_small_synthetic_setting_end_to_end(tmp_path: Path) -> None:
    """The acceptance setting: 9 phantoms of 48^3, 3 folds, 3 epochs (minutes on 2 cores)."""
    from swapseg.experiments.full_vs_patch import run_full_vs_patch

    data = _synth(tmp_path / "data", 9, 48)
    base = tiny(data=str(data), out=str(tmp_path / "exp"), shape=(48, 48, 48),
                base_filters=8, depth=4, folds=3, max_epochs=3)
    summary = run_full_vs_patch(base, tmp_path / "exp", progress=False, echo=lambda _: None)
    _check_outputs(tmp_path / "exp")
    assert summary["modes"]["full"]["n_cases"] == 9
    assert summary["settings"]["patch"] == 32


def test_saved_configs_from_older_versions_still_match() -> None:
    from swapseg.experiments.full_vs_patch import _same_config

    config = tiny(data="d", out="o", plan=None).to_dict()
    older = {k: v for k, v in config.items() if k != "augment"}  # a field added later
    assert _same_config(older, config)
    assert not _same_config({**config, "max_epochs": 3}, config)
    assert not _same_config({**config, "no_such_field": 1}, config)
    # a full arm saved with tier auto ran as the concrete plan the same settings give now
    from swapseg.offload.policy import MemoryPlan, SwapPolicy

    swapped = tiny(data="d", out="o", plan=MemoryPlan(swap=SwapPolicy(tier="disk")))
    assert _same_config({**swapped.to_dict(), "plan": {"swap": {"tier": "auto"}}},
                        swapped.to_dict())
    assert not _same_config({**swapped.to_dict(), "plan": {"swap": {"tier": "host"}}},
                            swapped.to_dict())
