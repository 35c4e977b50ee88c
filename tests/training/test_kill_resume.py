"""SIGKILL ``swapseg train`` during an epoch, then ``--resume``: nothing written before the
kill is corrupt, and training continues from the last checkpoint."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from swapseg.cli import main
from swapseg.training.checkpoint import load_checkpoint

EPOCHS = 5


def _log_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _cmd(data: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "swapseg.cli", "train", "--data", str(data), "--out",
            str(run), "--preset", "tiny", "--shape", "16", "--epochs", str(EPOCHS),
            "--no-progress", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def synth16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from swapseg.data.synthetic import synthesize

    data = tmp_path_factory.mktemp("synth16")
    synthesize(data, 10, 16, seed=0)
    return data


def test_sigkill_then_resume(synth16: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    proc = subprocess.Popen(_cmd(synth16, run), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    try:
        # wait until two epochs are logged and checkpointed, then kill mid-run
        while time.monotonic() < deadline and proc.poll() is None:
            if (run / "log.csv").exists() and len(_log_rows(run)) >= 2:
                break
            time.sleep(0.02)
        time.sleep(0.05)
        logged_before_kill = len(_log_rows(run))
        assert proc.poll() is None, "training finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL

    # everything on disk is whole and consistent
    config = json.loads((run / "config.json").read_text())
    assert config["max_epochs"] == EPOCHS and config["shape"] == [16, 16, 16]
    json.loads((run / "splits.json").read_text())
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    killed_at = last["epoch"]
    # the kill came mid-run, and last.pt trails what was logged by at most one epoch
    assert logged_before_kill - 1 <= killed_at < EPOCHS
    rows = _log_rows(run)
    assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1))
    assert len(rows) in (killed_at, killed_at + 1)  # the log may be one epoch ahead
    load_checkpoint(run / "checkpoints" / "best.pt")

    # the resumed run goes through the same CLI, in this process (saves a torch import)
    assert main(_cmd(synth16, run, "--resume")[3:]) == 0
    out = capsys.readouterr().out
    assert f"after epoch {killed_at} " in out
    assert f"epoch {killed_at + 1}/{EPOCHS}" in out
    assert "epoch 1/" not in out  # no epoch before the checkpoint was redone
    rows = _log_rows(run)
    assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 1))
    final = load_checkpoint(run / "checkpoints" / "last.pt")
    assert final["epoch"] == EPOCHS
    assert final["global_step"] == EPOCHS * last["global_step"] // killed_at
    assert not list((run / "checkpoints").glob(".*"))  # no stray temporary files
