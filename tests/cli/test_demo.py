import json

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
    assert swap["policy"]["tier"] == "host" and swap["first_step"]["swapped"] > 0
    demo = json.loads((out / "demo.json").read_text())
    assert demo["epochs"] == 2 and demo["wall_s"]["total_s"] > 0
    # the held-out case was neither trained nor validated on
    assert not set(demo["split"]["test"]) & set(demo["split"]["train"] + demo["split"]["val"])
    assert sorted(p.name for p in (out / "test").iterdir()) == demo["split"]["test"]


def test_demo_rejects_too_few_cases(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--cases", "3", "--quick"]) == 2
    assert "--cases 3" in capsys.readouterr().err
