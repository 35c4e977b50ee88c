"""The disk tier's folder fills up mid-step: one line naming the folder and the bytes, exit
2 from the CLI, no swap file left behind, the last good checkpoint intact."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from pathlib import Path

import pytest
import torch
from _swap_models import isensee
from _tmpfs import tiny_tmpfs, used_bytes

from swapseg.errors import InputError
from swapseg.offload import SwapPolicy, swap_activations
from swapseg.offload.transport import DiskFullError, DiskTransport, SwapFile


class FullAfter(DiskTransport):
    """A disk transport double: after ``ok`` files, each write lands 100 bytes, then the
    disk is full (ENOSPC from inside the transport's write, so its real handling runs)."""

    def __init__(self, disk_dir: str, ok: int) -> None:
        super().__init__(disk_dir, workers=1)
        self.ok = ok

    def _fill(self, fd: int, host: torch.Tensor) -> SwapFile:
        self.ok -= 1
        if self.ok >= 0:
            return super()._fill(fd, host)
        os.write(fd, b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")


def _open_swap_files(folder: Path) -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}").startswith(str(folder) + "/")
        except OSError:
            pass
    return n


def _step(model, policy, **kw) -> None:
    with swap_activations(model, policy, **kw):
        model(torch.randn(1, 2, 16, 16, 16)).square().mean().backward()


@pytest.mark.parametrize("ok", [0, 5, 30])
def test_enospc_mid_step_raises_one_line_and_leaves_nothing(tmp_path, ok):
    model = isensee()
    policy = SwapPolicy(tier="disk", disk_dir=str(tmp_path))
    with pytest.raises(DiskFullError) as info:
        _step(model, policy, transport=lambda d: FullAfter(str(tmp_path), ok))
    msg = str(info.value)
    assert isinstance(info.value, InputError) and len(msg.splitlines()) == 1
    assert str(tmp_path) in msg and " bytes " in msg
    assert os.listdir(tmp_path) == [] and _open_swap_files(tmp_path) == 0
    assert all(p.grad is None for p in model.parameters())  # the step never completed


def test_failure_found_in_backward_keeps_its_type(tmp_path):
    """The last write fails; it surfaces at the first unpack, inside autograd's backward."""
    model = isensee()
    policy = SwapPolicy(tier="disk", disk_dir=str(tmp_path))
    with swap_activations(model, policy, workers=0, max_inflight_bytes=None) as st:
        model(torch.randn(1, 2, 16, 16, 16)).square().mean().backward()
    n = st.swapped
    model.zero_grad()
    forward_done = False
    with pytest.raises(DiskFullError):
        with swap_activations(model, policy, max_inflight_bytes=None,
                              transport=lambda d: FullAfter(str(tmp_path), n - 1)):
            loss = model(torch.randn(1, 2, 16, 16, 16)).square().mean()
            forward_done = True
            loss.backward()
    assert forward_done
    assert os.listdir(tmp_path) == [] and _open_swap_files(tmp_path) == 0


def test_real_enospc_on_a_tiny_tmpfs(tmp_path):
    with tiny_tmpfs(tmp_path / "tiny", "1m") as tiny:
        base = used_bytes(tiny)
        model = isensee()  # a 16^3 step swaps several MiB: more than the 1 MiB there
        with pytest.raises(DiskFullError) as info:
            _step(model, SwapPolicy(tier="disk", disk_dir=str(tiny)))
        assert str(tiny) in str(info.value) and len(str(info.value).splitlines()) == 1
        assert os.listdir(tiny) == [] and used_bytes(tiny) == base
        assert _open_swap_files(tiny) == 0


# ---------------------------------------------------------------- the CLI, end to end
@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from swapseg.data.synthetic import synthesize

    data = tmp_path_factory.mktemp("synth")
    synthesize(data, 6, 16, seed=1)
    return data


def _full_once_checkpointed(monkeypatch, run: Path, fill) -> dict[str, str]:
    """Swap writes succeed until the first checkpoint exists; then ``fill(transport)`` makes
    the folder full for good. Records the checkpoint's hash at that moment."""
    seen: dict[str, str] = {}
    real = DiskTransport._fill

    def fill_then_write(self, fd, host):
        last = run / "checkpoints" / "last.pt"
        if not seen and last.exists():
            seen["sha"] = hashlib.sha256(last.read_bytes()).hexdigest()
            fill(self)
        if seen.get("double"):  # the double: a full disk after 100 more bytes
            os.write(fd, b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, fd, host)
    monkeypatch.setattr(DiskTransport, "_fill", fill_then_write)
    return seen


def _train(data: Path, run: Path, swap_dir: Path) -> int:
    from swapseg.cli import main
    return main(["train", "--data", str(data), "--out", str(run), "--preset", "tiny",
                 "--shape", "16", "--epochs", "3", "--no-progress", "--swap", "all",
                 "--swap-tier", "disk", "--swap-disk-dir", str(swap_dir)])


def _fill_tmpfs(tr: DiskTransport) -> None:
    with open(os.path.join(tr.dir, "filler"), "wb") as fh:
        with contextlib.suppress(OSError):
            while True:
                fh.write(b"\0" * 2**16)
                fh.flush()


@pytest.mark.parametrize("how", ["double", "tmpfs"])
def test_train_on_a_full_swap_folder_exits_2_and_keeps_the_checkpoint(
        synth, tmp_path, monkeypatch, capsys, how):
    from swapseg.training.checkpoint import load_checkpoint

    run = tmp_path / "run"
    if how == "tmpfs":
        swap_ctx = tiny_tmpfs(tmp_path / "tiny", "16m")
    else:
        (tmp_path / "swap").mkdir()
        swap_ctx = contextlib.nullcontext(tmp_path / "swap")
    with swap_ctx as swap:
        def fill(tr: DiskTransport) -> None:
            if how == "tmpfs":
                _fill_tmpfs(tr)
            else:
                seen["double"] = "1"
        seen = _full_once_checkpointed(monkeypatch, run, fill)
        assert _train(synth, run, swap) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert err.startswith("swapseg: error: swap folder") and str(swap) in err
        assert " bytes " in err
        assert set(os.listdir(swap)) <= {"filler"} and _open_swap_files(swap) == 0
    last = run / "checkpoints" / "last.pt"
    assert seen, "the swap folder never filled: the test did not run its scenario"
    assert hashlib.sha256(last.read_bytes()).hexdigest() == seen["sha"]
    assert load_checkpoint(last)["epoch"] >= 1
