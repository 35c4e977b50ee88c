"""``swapseg train`` and its run folder: never overwritten silently, resumable from any
directory (old relative-path runs too), flags with ``--resume`` applied or named as ignored."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from swapseg.cli import main
from swapseg.training.checkpoint import load_checkpoint
from swapseg.training.runlog import read_log

pytestmark = pytest.mark.usefixtures("one_thread")


def _train(data: Path | str, out: Path | str, *extra: str) -> int:
    return main(["train", "--data", str(data), "--out", str(out), "--preset", "tiny",
                 "--shape", "16", "--folds", "3", "--no-progress", *extra])


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


def test_a_run_is_never_overwritten_without_overwrite(synth, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(synth, run, "--epochs", "2") == 0
    before = (run / "config.json").read_text(), (run / "log.csv").read_text()
    capsys.readouterr()
    assert _train(synth, run, "--epochs", "1") == 2
    err = capsys.readouterr().err.strip()
    assert "holds a training run" in err and "--resume" in err and "--overwrite" in err
    assert len(err.splitlines()) == 1
    assert ((run / "config.json").read_text(), (run / "log.csv").read_text()) == before
    assert _train(synth, run, "--epochs", "1", "--resume", "--overwrite") == 2
    cached = sorted(p.name for p in (run / "cache").iterdir())
    assert _train(synth, run, "--epochs", "1", "--overwrite") == 0
    assert [r["epoch"] for r in read_log(run / "log.csv")] == ["1"]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1
    assert sorted(p.name for p in (run / "cache").iterdir()) == cached  # the cache is kept


def test_resume_with_more_epochs_trains_on_exactly(synth, tmp_path, capsys):
    straight, run = tmp_path / "straight", tmp_path / "run"
    assert _train(synth, straight, "--epochs", "3") == 0
    assert _train(synth, run, "--epochs", "2") == 0
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "nothing to train" in out and "give --epochs N with N > 2" in out
    assert main(["train", "--out", str(run), "--resume", "--epochs", "3", "--lr", "0.1",
                 "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "epoch 3/3" in captured.out and "nothing to train" not in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "ignoring --lr" in err[0] and "--epochs" in err[0]
    a, b = _weights(straight), _weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the lr flag was not applied
    assert json.loads((run / "config.json").read_text())["max_epochs"] == 3


def test_resume_without_a_run_starts_from_the_beginning(synth, tmp_path, capsys):
    run = tmp_path / "new"
    assert _train(synth, run, "--epochs", "1", "--resume") == 0
    out = capsys.readouterr().out
    assert "no checkpoint yet" in out and "starting from the beginning" in out
    assert "epoch 1/1" in out


def test_new_runs_store_absolute_paths(synth, tmp_path, monkeypatch):
    monkeypatch.chdir(synth.parent)
    assert _train(synth.name, tmp_path / "run", "--epochs", "1") == 0
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["data"] == str(synth) and cfg["out"] == str(tmp_path / "run")


def _old_run(synth: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A run as the previous format saved it: data and out relative to where it started."""
    shutil.copytree(synth, home / "data")
    monkeypatch.chdir(home)
    assert _train("data", "runs/r", "--epochs", "1") == 0
    cfg_path = home / "runs" / "r" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(data="data", out="runs/r")
    cfg_path.write_text(json.dumps(cfg))
    return home / "runs" / "r"


def test_old_relative_run_resumes_from_another_directory(synth, tmp_path, monkeypatch, capsys):
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    run = _old_run(synth, home, monkeypatch)
    monkeypatch.chdir(elsewhere)  # "data" is resolved where training started: home
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--no-progress"]) == 0
    assert "epoch 2/2" in capsys.readouterr().out
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"] == str(home / "data") and cfg["out"] == str(run)


def test_moved_old_run_resolves_data_against_cwd_or_asks_for_it(synth, tmp_path, monkeypatch,
                                                                capsys):
    home = tmp_path / "home"
    home.mkdir()
    run = _old_run(synth, home, monkeypatch)
    moved = tmp_path / "moved"
    shutil.move(run, moved)
    monkeypatch.chdir(tmp_path)  # no "data" here: the rule cannot find it
    args = ["train", "--out", str(moved), "--resume", "--epochs", "2", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "data folder" in err and "give --data DIR" in err and len(err.splitlines()) == 1
    assert main([*args, "--data", str(home / "data")]) == 0  # --data applies on resume
    assert "epoch 2/2" in capsys.readouterr().out
    monkeypatch.chdir(home)  # the current directory holds "data": found there
    cfg = json.loads((moved / "config.json").read_text())
    cfg.update(data="data", out="runs/r")
    (moved / "config.json").write_text(json.dumps(cfg))
    assert main([*args[:-2], "3", "--no-progress"]) == 0


@pytest.mark.parametrize("plan", [["--swap", "all"], ["--swap", "PLAN"],
                                  ["--swap", "auto", "--memory-budget", "64MiB"]])
def test_resume_with_another_memory_plan_trains_on_bitwise_as_before(synth, tmp_path, capsys,
                                                                     plan):
    """After an out-of-memory stop a run goes on with a plan that fits: a plan changes
    where saved tensors live, not what a step computes (dropout on, so RNG use counts)."""
    recompute = tmp_path / "recompute.json"
    recompute.write_text('{"name": "rc", "swap": null, "recompute": {"scopes": ["*"]}}')
    plan = [str(recompute) if p == "PLAN" else p for p in plan]
    straight, run = tmp_path / "straight", tmp_path / "run"
    assert _train(synth, straight, "--epochs", "3", "--dropout", "0.2") == 0
    assert _train(synth, run, "--epochs", "2", "--dropout", "0.2") == 0
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--epochs", "3", "--no-progress",
                 *plan]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume with a new memory plan" in err[0]
    a, b = _weights(straight), _weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["plan"] is not None and cfg["max_epochs"] == 3
    assert json.loads((run / "plan.json").read_text())["plan"] == cfg["plan"]
