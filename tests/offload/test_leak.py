"""No leak over 30 steps; the disk tier leaves no files, even when a step raises."""

from __future__ import annotations

import os
import time

import pytest
import torch
from _swap_models import isensee

from swapseg.offload import OffloadEngine, SwapPolicy, get_pool, swap_activations


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_thirty_steps_flat():
    torch.manual_seed(0)
    model = isensee()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(1, 2, 16, 16, 16)
    pool = get_pool(False)
    swapped, pool_bytes, rss = [], [], []
    with OffloadEngine(model, SwapPolicy(tier="host", prefetch=3)) as engine:
        st = engine.stats
        for _ in range(30):
            opt.zero_grad()
            with engine.step():
                model(x).square().mean().backward()
            opt.step()
            swapped.append(st.last_step.swapped)
            assert st.saved_bytes == 0
            assert pool.free_bytes == pool.allocated_bytes  # every buffer came back
            pool_bytes.append(pool.allocated_bytes)
            rss.append(_rss_bytes())
    assert len(set(swapped)) == 1 and swapped[0] > 0
    assert len(set(pool_bytes[2:])) == 1
    assert st.steps == st.forwards == st.backwards == 30
    assert rss[-1] - rss[4] < 16 * 2**20, [r // 2**20 for r in rss]


def _swap_bytes(root, pid="self") -> int:
    """Bytes of the files under ``root`` that process ``pid`` holds open (named or not)."""
    total = 0
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
            if target.startswith(str(root) + "/"):
                total += os.stat(os.path.join(fd_dir, fd)).st_size
        except OSError:
            continue  # closed meanwhile
    return total


def test_disk_tier_leaves_no_files(tmp_path):
    model = isensee()
    x = torch.randn(1, 2, 16, 16, 16)
    policy = SwapPolicy(tier="disk", disk_dir=str(tmp_path))
    with swap_activations(model, policy) as st:
        model(x).square().mean().backward()
        model(x).square().mean().backward()
    assert st.swapped > 0
    assert os.listdir(tmp_path) == []


def test_disk_tier_files_exist_during_step_and_go_when_a_step_raises(tmp_path):
    """The swap files have no names, but hold bytes during the step; none after."""
    model = isensee()
    x = torch.randn(1, 2, 16, 16, 16)
    policy = SwapPolicy(tier="disk", disk_dir=str(tmp_path))
    seen: list[int] = []

    def boom(module, args, output):
        seen.append(_swap_bytes(tmp_path))
        assert os.listdir(tmp_path) == []  # unnamed from the start
        raise RuntimeError("boom")

    h = model.decoder[0].register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            with swap_activations(model, policy, workers=0):
                model(x).square().mean().backward()
    finally:
        h.remove()
    assert seen and seen[0] > 0  # files were written before the failure
    assert os.listdir(tmp_path) == [] and _swap_bytes(tmp_path) == 0


def test_error_after_forward_releases_graph(tmp_path):
    """An error between forward and backward: files go, the dead graph says so."""
    model = isensee()
    x = torch.randn(1, 2, 16, 16, 16)
    policy = SwapPolicy(tier="disk", disk_dir=str(tmp_path))
    loss = None
    with pytest.raises(ValueError):
        with swap_activations(model, policy, workers=0):
            loss = model(x).square().mean()
            raise ValueError("between forward and backward")
    assert os.listdir(tmp_path) == []
    with pytest.raises(RuntimeError, match="released"):
        loss.backward()


def test_graph_outliving_the_context_still_works():
    torch.manual_seed(2)
    model = isensee().eval()
    x = torch.randn(1, 2, 16, 16, 16)
    model(x).square().mean().backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    pool = get_pool(False)
    with swap_activations(model, SwapPolicy(tier="host")) as st:
        loss = model(x).square().mean()
    loss.backward()  # after the context: copies run inline
    for a, p in zip(ref, model.parameters(), strict=True):
        assert torch.equal(a, p.grad)
    del loss
    assert st.saved_bytes == 0 and pool.free_bytes == pool.allocated_bytes


_KILLED_CHILD = """
import os, sys, time, torch
sys.path.insert(0, {tests!r})
from _swap_models import isensee
from swapseg.offload import SwapPolicy, swap_activations
folder, ready = sys.argv[1], sys.argv[2]
torch.set_num_threads(1)
model = isensee()

def stop_here(module, grad_output):  # mid-backward: files written, some reloaded
    with open(ready + ".tmp", "w") as fh:
        fh.write(str(os.getpid()))
    os.replace(ready + ".tmp", ready)
    time.sleep(120)

model.encoder[1].register_full_backward_pre_hook(stop_here)
with swap_activations(model, SwapPolicy(tier="disk", disk_dir=folder, prefetch=2)):
    model(torch.randn(1, 2, 16, 16, 16, requires_grad=True)).square().mean().backward()
"""


def _sigkill_mid_backward(folder, ready) -> int:
    """Bytes the child held in ``folder`` when it was killed mid-backward."""
    import signal
    import subprocess
    import sys

    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", _KILLED_CHILD.format(tests=tests),
                              str(folder), str(ready)], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert child.poll() is None, child.stderr.read().decode()
            assert time.monotonic() < deadline, "the child never reached backward"
            time.sleep(0.02)
        held = _swap_bytes(folder, pid=child.pid)
        assert os.listdir(folder) == []  # no names, even while the files hold bytes
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    return held


def test_sigkill_mid_backward_leaves_zero_bytes(tmp_path):
    folder = tmp_path / "swap"
    folder.mkdir()
    held = _sigkill_mid_backward(folder, tmp_path / "ready")
    assert held > 0  # the swap files were there, holding bytes, when the kill came
    assert os.listdir(folder) == []


def test_sigkill_mid_backward_gives_the_space_back_on_tmpfs(tmp_path):
    from _tmpfs import tiny_tmpfs, used_bytes

    with tiny_tmpfs(tmp_path / "tmpfs", "64m") as folder:
        base = used_bytes(folder)
        held = _sigkill_mid_backward(folder, tmp_path / "ready")
        assert held > 0
        assert os.listdir(folder) == [] and used_bytes(folder) == base


def test_pool_keeps_what_the_last_context_used_and_no_more():
    """The bound: at context exit the pool keeps, per size, the most buffers the context
    had in use at once; sizes it stopped using go (volumes of changing shapes)."""
    model = isensee()
    pool = get_pool(False)

    def one_context(size: int):
        with swap_activations(model, SwapPolicy(tier="host")) as st:
            model(torch.randn(1, 2, size, size, size)).square().mean().backward()
        assert pool.free_bytes == pool.allocated_bytes  # nothing in use after the context
        return st

    st16 = one_context(16)
    # every swapped storage held its buffer until backward: all of them were in use at once
    assert pool.allocated_bytes == st16.bytes_out > 0
    allocations = pool.allocations
    one_context(16)
    assert pool.allocations == allocations  # the same shape reuses every buffer
    st12 = one_context(12)
    assert pool.allocated_bytes == st12.bytes_out < st16.bytes_out  # 16^3 sizes are gone
