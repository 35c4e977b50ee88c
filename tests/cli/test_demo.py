import json
import os
import subprocess
import sys
import time

import pytest
import torch

from swapseg.cli import main


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors on a shared CPU
    yield
    torch.set_num_threads(n)


def test_quick_demo_writes_the_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick", "--cases", "5", "--shape", "16"]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out}/" in printed and "held-out Dice (1 cases): WT" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["dice"]) == {"WT", "TC", "ET"} and summary["n_cases"] == 1
    for d in summary["dice"].values():
        assert 0.0 <= d <= 1.0
    for name in ("boxplot.png", "log.csv", "swap_stats.json", "per_case.csv", "demo.json"):
        assert (out / name).stat().st_size > 0, name
    assert list((out / "overlays").glob("*.png"))
    swap = json.loads((out / "swap_stats.json").read_text())
    assert swap["policy"]["tier"] == "disk" and swap["first_step"]["swapped"] > 0
    demo = json.loads((out / "demo.json").read_text())
    assert demo["epochs"] == 2 and demo["wall_s"]["total_s"] > 0
    # the held-out case was neither trained nor validated on
    assert not set(demo["split"]["test"]) & set(demo["split"]["train"] + demo["split"]["val"])
    assert sorted(p.name for p in (out / "test").iterdir()) == demo["split"]["test"]


def test_demo_rejects_too_few_cases(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--cases", "3", "--quick"]) == 2
    assert "--cases 3" in capsys.readouterr().err


@pytest.mark.slow
def test_full_demo_meets_the_dice_targets_in_10_minutes(tmp_path):
    """The acceptance run: ``swapseg demo`` with no options, in a fresh directory."""
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "swapseg.cli", "demo"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=900, env=dict(os.environ))
    wall = time.monotonic() - t0
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads((tmp_path / "swapseg-demo" / "summary.json").read_text())
    dice = summary["dice"]
    assert dice["WT"] >= 0.85 and dice["TC"] >= 0.70 and dice["ET"] >= 0.60, dice
    assert wall < 600, f"demo took {wall:.0f} s"
