"""``--compile``: a compiled model under the swap engine.

The fast tests compile with ``backend="aot_eager"`` (AOTAutograd's forward/backward split
and saved-tensor handling, kernels left eager): it takes about a second, and its
gradients are bitwise those of eager. The inductor test (generated C++ kernels, about
20 s of compilation for the tiny U-Net on this CPU) is marked slow; its kernels reorder
float sums, so it matches eager within a tolerance, and swapping still changes no bit.
"""

import pytest
import torch
from _train_helpers import BlobVolumes

from swapseg.models.unet3d import Isensee3DUNet
from swapseg.offload import MemoryPlan, SwapPolicy, swap_activations
from swapseg.training import compiling
from swapseg.training.config import tiny
from swapseg.training.loop import build_model, fit

SILENT = {"progress": False, "echo": lambda s: None}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _grads(backend, policy, steps=3):
    """Parameter gradients of ``steps`` SGD steps of the tiny U-Net (compiled or eager)."""
    torch.manual_seed(0)
    model = Isensee3DUNet(4, 3, base_filters=4, depth=3, dropout=0.0)
    forward = compiling.compile_model(model, backend is not None, backend)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(1, 4, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    out = []
    with swap_activations(model, policy) as stats:
        for _ in range(steps):
            opt.zero_grad()
            forward(x).square().mean().backward()
            out.append([p.grad.clone() for p in model.parameters()])
            opt.step()
    return out, stats.as_dict()


def test_compiled_aot_eager_under_swapping_is_bitwise_eager():
    eager, _ = _grads(None, None)
    plain, _ = _grads("aot_eager", None)
    swapped, stats = _grads("aot_eager", SwapPolicy(tier="host"))
    assert stats["swapped"] > 0 and stats["bytes_in"] == stats["bytes_out"] > 0
    # a compiled graph's saved tensors are packed under the scope active when it returns
    assert set(stats["by_scope"]) == {""}
    for step, (e, p, s) in enumerate(zip(eager, plain, swapped, strict=True)):
        for i, (a, b, c) in enumerate(zip(e, p, s, strict=True)):
            assert torch.equal(b, c), (step, i)  # swapping changes no bit
            assert torch.equal(a, b), (step, i)  # aot_eager is eager's arithmetic


@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
def test_fit_with_compile_and_swap_all_equals_compile_without(tmp_path, monkeypatch, precision):
    monkeypatch.setattr(compiling, "BACKEND", "aot_eager")
    weights = []
    for name, swap in (("none", None), ("swap", SwapPolicy(tier="host"))):
        cfg = tiny(out=str(tmp_path / name), max_epochs=2, compile=True,
                   plan=swap and MemoryPlan(swap=swap),
                   precision=precision)
        model = build_model(cfg)
        res = fit(model, BlobVolumes(3), BlobVolumes(2, seed=1), cfg, **SILENT)
        assert res["global_step"] == 6
        weights.append(model.state_dict())
    assert not any(k.startswith("_orig_mod") for k in weights[0])  # the bare model's keys
    for (k, a), b in zip(weights[0].items(), weights[1].values(), strict=True):
        assert torch.equal(a, b), k


@pytest.mark.slow
def test_compiled_inductor_under_swapping_matches_eager():
    eager, _ = _grads(None, None, steps=2)
    plain, _ = _grads("inductor", None, steps=2)
    swapped, stats = _grads("inductor", SwapPolicy(tier="host"), steps=2)
    assert stats["swapped"] > 0
    for e, p, s in zip(eager, plain, swapped, strict=True):
        scale = max(g.abs().max().item() for g in e)
        for a, b, c in zip(e, p, s, strict=True):
            assert torch.equal(b, c)  # swapping changes no bit
            # fused kernels sum in another order: absolute error against the largest
            # gradient (per-tensor relative error is meaningless for near-zero gradients,
            # such as biases followed by instance norm)
            assert (a - b).abs().max().item() <= 1e-5 * scale


def test_compiled_model_is_compiled_once_across_epochs_with_swapping(tmp_path, monkeypatch):
    # a swap context per epoch would register new module hooks each epoch, which fail
    # dynamo's guards: one recompilation per epoch (and eager after the cache limit)
    from torch._dynamo.utils import counters

    monkeypatch.setattr(compiling, "BACKEND", "aot_eager")
    counters.clear()
    cfg = tiny(out=str(tmp_path / "run"), max_epochs=3, compile=True,
               plan=MemoryPlan(swap=SwapPolicy(tier="host")))
    res = fit(build_model(cfg), BlobVolumes(2), BlobVolumes(1, seed=1), cfg, **SILENT)
    assert res["epochs"] == 3
    assert counters["stats"]["unique_graphs"] == 1
