"""Kill ``swapseg train`` at several moments, then ``--resume``: nothing written before the
kill is corrupt, and the final weights are bitwise those of an uninterrupted run with the
same seed (CPU, host-tier swapping on, augmentation on).

Kill points: SIGKILL before the first checkpoint exists, SIGKILL inside a checkpoint write
(the temporary file half written), SIGKILL at a seeded random moment, SIGTERM mid-epoch
(a checkpoint is written after the step, exit 143) and SIGINT (Ctrl-C, exit 130, the
``--resume`` command printed). The first two and SIGTERM come on cue through the fault
hooks of ``swapseg.training.checkpoint`` and ``swapseg.training.interrupt``.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from swapseg.cli import main
from swapseg.training.checkpoint import FAULT_KILL_IN_SAVE, load_checkpoint
from swapseg.training.interrupt import FAULT_KILL_AFTER_STEP, FAULT_SIGNAL_AFTER_STEP
from swapseg.training.runlog import read_log

EPOCHS = 4
STEPS = 6  # 10 cases, 5 folds: 6 training cases, batch 1


def _args(data: Path, run: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out", str(run), "--preset", "tiny", "--shape",
            "16", "--epochs", str(EPOCHS), "--swap", "all", "--swap-tier", "host",
            "--no-progress", *extra]


def _start(data: Path, run: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "swapseg.cli", *_args(data, run)],
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                                 **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


#: A hang guard, not a time limit: a loaded machine is slow, not hung.
HANG_S = 900


def _finish(proc: subprocess.Popen[str], timeout: float = HANG_S) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err


def _wait_for_checkpoint(proc: subprocess.Popen[str], run: Path) -> None:
    """Until last.pt exists. Not until log.csv has a row: the log is written before the
    checkpoints, so a loaded machine may be killed between them, with no last.pt yet."""
    last = run / "checkpoints" / "last.pt"  # renamed into place whole: existing is complete
    deadline = time.monotonic() + HANG_S
    while time.monotonic() < deadline and proc.poll() is None:
        if last.exists():
            return
        time.sleep(0.01)
    raise AssertionError("the run ended or stalled before its first checkpoint")


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


@pytest.fixture(scope="module")
def synth10(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from swapseg.data.synthetic import synthesize

    data = tmp_path_factory.mktemp("synth10")
    synthesize(data, 10, 16, seed=0)
    return data


@pytest.fixture(scope="module")
def reference(synth10: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run."""
    run = tmp_path_factory.mktemp("reference") / "run"
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the killed runs (OMP_NUM_THREADS=1) and the resumes
    try:
        assert main(_args(synth10, run)) == 0
    finally:
        torch.set_num_threads(n)
    return run


def _resume_and_compare(data: Path, run: Path, reference: Path,
                        capsys: pytest.CaptureFixture[str]) -> str:
    """Resume in this process; the run must end as the reference did, bitwise."""
    capsys.readouterr()
    assert main(_args(data, run, "--resume")) == 0
    out = capsys.readouterr().out
    final, ref = _weights(run), _weights(reference)
    assert final.keys() == ref.keys()
    assert all(torch.equal(final[k], ref[k]) for k in ref), "weights differ after resume"
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (ck["epoch"], ck["global_step"]) == (EPOCHS, EPOCHS * STEPS)
    rows, ref_rows = read_log(run / "log.csv"), read_log(reference / "log.csv")
    assert [r["epoch"] for r in rows] == [str(e) for e in range(1, EPOCHS + 1)]
    for key in ("train_loss", "val_loss", "lr", "best"):
        assert [r[key] for r in rows] == [r[key] for r in ref_rows], key
    assert not list((run / "checkpoints").glob(".*"))  # no stray temporary files
    return out


def test_sigkill_before_the_first_checkpoint(synth10, reference, tmp_path, capsys):
    run = tmp_path / "run"
    rc, _ = _finish(_start(synth10, run, **{FAULT_KILL_AFTER_STEP: "2"}))
    assert rc == -signal.SIGKILL
    assert (run / "config.json").is_file() and not (run / "checkpoints" / "last.pt").exists()
    out = _resume_and_compare(synth10, run, reference, capsys)
    assert "no checkpoint yet" in out and "starting from the beginning" in out
    assert "epoch 1/" in out


def test_sigkill_inside_a_checkpoint_write(synth10, reference, tmp_path, capsys):
    run = tmp_path / "run"
    rc, _ = _finish(_start(synth10, run, **{FAULT_KILL_IN_SAVE: "last.pt:2"}))
    assert rc == -signal.SIGKILL
    ckpts = run / "checkpoints"
    torn = list(ckpts.glob(".last.pt.*"))
    assert len(torn) == 1, "the kill did not come inside the write of last.pt"
    with pytest.raises(Exception):  # noqa: B017 - any failure: the temporary is torn
        torch.load(torn[0], weights_only=True)
    assert load_checkpoint(ckpts / "last.pt")["epoch"] == 1  # the previous one is whole
    out = _resume_and_compare(synth10, run, reference, capsys)
    assert "after epoch 1 " in out and "epoch 1/" not in out


def test_sigkill_at_a_random_moment(synth10, reference, tmp_path, capsys):
    run = tmp_path / "run"
    proc = _start(synth10, run)
    try:
        _wait_for_checkpoint(proc, run)
        time.sleep(random.Random(16).uniform(0.0, 0.8))
        assert proc.poll() is None, "training finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        rc, _ = _finish(proc)
    assert rc == -signal.SIGKILL
    killed_at = load_checkpoint(run / "checkpoints" / "last.pt")["epoch"]
    assert 0 < killed_at < EPOCHS
    out = _resume_and_compare(synth10, run, reference, capsys)
    assert f"after epoch {killed_at}" in out


def test_sigterm_mid_epoch_writes_a_checkpoint_after_the_step(synth10, reference, tmp_path,
                                                             capsys):
    run = tmp_path / "run"
    rc, err = _finish(_start(synth10, run, **{FAULT_SIGNAL_AFTER_STEP: f"{STEPS + 2}:TERM"}))
    assert rc == 143, err
    assert "interrupted by SIGTERM at epoch 2, step 2" in err
    assert f"continue with: swapseg train --out {run} --resume" in err
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (ck["epoch"], ck["global_step"], ck["partial"]["steps"]) == (1, STEPS + 2, 2)
    out = _resume_and_compare(synth10, run, reference, capsys)
    assert "after epoch 1, step 2 of epoch 2" in out


def test_ctrl_c_exits_130_with_the_resume_command(synth10, reference, tmp_path, capsys):
    run = tmp_path / "run"
    proc = _start(synth10, run)
    try:
        _wait_for_checkpoint(proc, run)
        proc.send_signal(signal.SIGINT)
    finally:
        rc, err = _finish(proc)
    assert rc == 130, err
    # the host-tier warning of a CPU run may come first; then the stop and the resume command
    lines = [ln for ln in err.strip().splitlines()
             if not ln.startswith("swapseg: warning: host-tier")]
    assert lines[0].startswith("swapseg: SIGINT: stopping after this step")
    assert lines[-1].endswith(f"continue with: swapseg train --out {run} --resume")
    assert len(lines) == 2 and "Traceback" not in err
    _resume_and_compare(synth10, run, reference, capsys)
