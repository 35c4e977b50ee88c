"""``--precision`` and ``--compile`` on the command line: train, demo, experiment."""

import json
import re
from pathlib import Path

import pytest
import torch

from swapseg.cli import main
from swapseg.training import compiling, epochs
from swapseg.training.checkpoint import load_checkpoint
from swapseg.training.runlog import read_log

pytestmark = pytest.mark.usefixtures("one_thread")


def _train(data: Path, out: Path, *extra: str) -> int:
    return main(["train", "--data", str(data), "--out", str(out), "--preset", "tiny",
                 "--shape", "16", "--no-progress", "--workers", "0", *extra])


def _weights(run: Path) -> dict:
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


def _assert_bitwise(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_train_swap_all_and_none_end_in_bitwise_equal_weights(tmp_path, synth, precision):
    for swap in ("none", "all"):
        assert _train(synth, tmp_path / swap, "--epochs", "2", "--precision", precision,
                      "--swap", swap) == 0
    assert float(read_log(tmp_path / "all" / "log.csv")[-1]["swap_swapped"]) > 0
    assert json.loads((tmp_path / "all" / "config.json").read_text())["precision"] == precision
    _assert_bitwise(_weights(tmp_path / "none"), _weights(tmp_path / "all"))


def test_fp16_train_resumes_exactly_after_an_interrupt(tmp_path, synth, monkeypatch):
    args = ("--epochs", "3", "--precision", "16-mixed", "--swap", "all")
    assert _train(synth, tmp_path / "straight", *args) == 0
    end_epoch = epochs._end_epoch

    def interrupt_after_2(ctx, *a, **k):
        stop = end_epoch(ctx, *a, **k)
        if ctx.state.epoch == 2:
            raise KeyboardInterrupt
        return stop

    monkeypatch.setattr(epochs, "_end_epoch", interrupt_after_2)
    assert _train(synth, tmp_path / "cut", *args) == 130
    monkeypatch.setattr(epochs, "_end_epoch", end_epoch)
    assert main(["train", "--out", str(tmp_path / "cut"), "--resume", "--no-progress"]) == 0
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert b["epoch"] == 3 and a["scaler"] == b["scaler"] and a["scaler"]["scale"] > 0
    _assert_bitwise(a["model"], b["model"])
    assert [r["skipped_steps"] for r in read_log(tmp_path / "cut" / "log.csv")] == ["0"] * 3


def test_compile_with_swap_all_trains(tmp_path, synth, monkeypatch, capsys):
    # aot_eager: compiled graphs and their saved tensors, without minutes of C++ builds
    monkeypatch.setattr(compiling, "BACKEND", "aot_eager")
    torch._dynamo.reset()
    assert _train(synth, tmp_path / "run", "--epochs", "2", "--compile", "--swap", "all",
                  "--precision", "bf16-mixed") == 0
    torch._dynamo.reset()
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["compile"] is True and cfg["precision"] == "bf16-mixed"
    stats = json.loads((tmp_path / "run" / "swap_stats.json").read_text())
    assert stats["first_step"]["swapped"] > 0
    assert set(stats["first_step"]["by_scope"]) == {""}  # packed by the compiled graph
    out = capsys.readouterr().out.splitlines()
    assert any("epoch 2/2" in line for line in out)
    # the long first step is announced before it starts and timed after it ends
    said = [i for i, line in enumerate(out) if line.startswith("compil")]
    assert len(said) == 2, out
    assert out[said[0]].startswith("compiling the model (torch.compile, aot_eager)")
    assert re.fullmatch(r"compiled: the first step, compiling included, took \d+\.\d s",
                        out[said[1]])
    first_epoch = next(i for i, line in enumerate(out) if "epoch 1/2" in line)
    assert said[0] < said[1] < first_epoch


def test_bad_precision_exits_2(tmp_path, synth, capsys):
    with pytest.raises(SystemExit) as exc:
        _train(synth, tmp_path / "run", "--precision", "fp16")
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith(
        "swapseg train: error: argument --precision: precision must be one of 32, ")
    assert not (tmp_path / "run").exists()


def test_demo_and_experiment_pass_precision_on(tmp_path, monkeypatch):
    import swapseg.experiments.demo as demo
    import swapseg.experiments.full_vs_patch as fvp

    seen = {}

    def fake_demo(out, **kwargs):
        seen["demo"] = kwargs
        return {"dice": {"WT": 0, "TC": 0, "ET": 0}, "n_cases": 0,
                "demo": {"wall_s": {"total_s": 0}}}

    def fake_experiment(base, out, **kwargs):
        seen["experiment"] = base
        return {"modes": {m: {"dice": {}} for m in ("full", "patch")},
                "time": {"ratios": {"total_s_patch_over_full": None,
                                    "epoch_s_patch_over_full": None}}}

    monkeypatch.setattr(demo, "run_demo", fake_demo)
    monkeypatch.setattr(fvp, "run_full_vs_patch", fake_experiment)
    assert main(["demo", "--out", str(tmp_path / "d"), "--precision", "16-mixed",
                 "--compile"]) == 0
    assert (seen["demo"]["precision"], seen["demo"]["compile"]) == ("16-mixed", True)
    assert main(["demo", "--out", str(tmp_path / "d")]) == 0
    assert (seen["demo"]["precision"], seen["demo"]["compile"]) == ("32", False)
    assert main(["experiment", "full-vs-patch", "--data", str(tmp_path), "--out",
                 str(tmp_path / "e"), "--precision", "bf16-mixed", "--no-progress"]) == 0
    assert seen["experiment"].precision == "bf16-mixed"
