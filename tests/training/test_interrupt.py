"""SIGTERM / Ctrl-C inside ``fit``: stop after the step, checkpoint mid-epoch, resume exactly."""

from __future__ import annotations

import signal

import pytest
import torch
from _train_helpers import BlobVolumes

from swapseg.training import interrupt
from swapseg.training.checkpoint import load_checkpoint
from swapseg.training.config import tiny
from swapseg.training.interrupt import FAULT_SIGNAL_AFTER_STEP, Interrupted, stop_signals
from swapseg.training.loop import build_model, fit

SILENT = {"progress": False, "echo": lambda s: None}


@pytest.mark.parametrize("workers, sig", [(0, "TERM"), (1, "INT")])
def test_stop_mid_epoch_then_resume_equals_uninterrupted(tmp_path, monkeypatch, workers, sig):
    data, val = BlobVolumes(4), BlobVolumes(2, seed=1)
    # dropout draws from the global torch RNG, so its mid-epoch state must be restored too
    straight = tiny(out=str(tmp_path / "a"), max_epochs=2, dropout=0.3, workers=workers)
    m_a = build_model(straight)
    fit(m_a, data, val, straight, **SILENT)

    cfg = straight.replace(out=str(tmp_path / "b"))
    monkeypatch.setenv(FAULT_SIGNAL_AFTER_STEP, f"6:{sig}")  # epoch 2, step 2 of 4
    with stop_signals(), pytest.raises(Interrupted) as exc:
        fit(build_model(cfg), data, val, cfg, **SILENT)
    assert exc.value.exit_status == 128 + getattr(signal, f"SIG{sig}")
    assert "at epoch 2, step 2" in str(exc.value)
    ck = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    assert (ck["epoch"], ck["global_step"], ck["partial"]["steps"]) == (1, 6, 2)
    monkeypatch.delenv(FAULT_SIGNAL_AFTER_STEP)

    torch.manual_seed(123)  # a resumed process starts from other RNG states
    m_b = build_model(cfg)
    fit(m_b, data, val, cfg, resume=True, **SILENT)
    for (name, a), b in zip(m_a.state_dict().items(), m_b.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    ref = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")["state"]
    got = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["state"]
    assert got["best_val_loss"] == ref["best_val_loss"]


def test_signal_before_the_first_step_or_twice_stops_at_once(monkeypatch):
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN where the suite runs in background
    with stop_signals():
        assert signal.getsignal(signal.SIGTERM) is interrupt._handler
        with pytest.raises(Interrupted, match="before a step could be saved"):
            signal.raise_signal(signal.SIGTERM)
        interrupt.after_step(1, None)  # the first step arms the deferred stop
        signal.raise_signal(signal.SIGINT)  # deferred: no exception yet
        with pytest.raises(interrupt.StopRequested):
            interrupt.after_step(2, "progress")
        with pytest.raises(Interrupted, match="again: stopped at once"):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before  # restored
    interrupt.after_step(3, None)  # outside the context: nothing is requested


def test_without_handlers_a_step_never_stops():
    interrupt.after_step(1, None)
    interrupt.after_epoch()
    assert not interrupt._state["installed"]
