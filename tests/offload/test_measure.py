"""measure_steps and the accounted contexts; dedup figures against save_on_cpu."""

from __future__ import annotations

import copy

import torch
from _swap_models import isensee

from swapseg.offload import SwapPolicy
from swapseg.offload.measure import keep_all, measure_steps, no_swap, save_on_cpu, swap


def _unique_saved_bytes(model, x) -> tuple[int, int]:
    """(sum of unique non-parameter storages saved, sum over every pack of tensor bytes)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[tuple[int, int], int] = {}
    keep, total = [], 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        if t.untyped_storage().data_ptr() not in params:
            seen[(t.untyped_storage().data_ptr(), t._version)] = t.untyped_storage().nbytes()
            keep.append(t)  # hold it: no address reuse within the step
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).square().mean().backward()
    return sum(seen.values()), total


def test_dedup_bytes_against_save_on_cpu():
    torch.manual_seed(0)
    model = isensee()  # train mode, as measure_steps runs it (dropout masks saved too)
    shape = (1, 2, 16, 16, 16)
    x = torch.randn(shape)
    unique, every_pack = _unique_saved_bytes(model, x)
    engine = measure_steps(copy.deepcopy(model), shape, swap(SwapPolicy(), workers=0),
                           steps=1, warmup=0)
    soc = measure_steps(copy.deepcopy(model), shape, save_on_cpu, steps=1, warmup=0)
    print(f"engine bytes_out {engine['bytes_out']}, unique saved storages {unique}, "
          f"save_on_cpu copies {soc['bytes_out']}")
    assert 0 < engine["bytes_out"] <= unique < soc["bytes_out"]
    assert soc["bytes_out"] == every_pack
    assert engine["bytes_in"] == engine["bytes_out"]


def test_measure_steps_keys_and_accounting():
    torch.manual_seed(0)
    model = isensee()
    shape = (1, 2, 16, 16, 16)
    base = measure_steps(copy.deepcopy(model), shape, no_swap, steps=2, warmup=1)
    kept = measure_steps(copy.deepcopy(model), shape, keep_all, steps=2, warmup=1)
    swp = measure_steps(copy.deepcopy(model), shape, swap(SwapPolicy(tier="host"), workers=0),
                        steps=2, warmup=1)
    for r in (base, kept, swp):
        assert r["step_s"] > 0 and len(r["step_s_all"]) == 2 and r["steps"] == 2
        assert r["peak_rss_bytes"] > 0
    assert base["peak_saved_bytes"] == 0 and base["bytes_out"] == 0
    assert kept["bytes_out"] == 0 and kept["peak_saved_bytes"] > 0
    assert 0 < swp["peak_saved_bytes"] < kept["peak_saved_bytes"] / 4
    # the timed steps prefetch by the order the warm-up step learned: every reload a hit
    assert swp["swapped"] > 0 and swp["prefetch_hits"] > 0 and swp["prefetch_misses"] == 0
    assert base["loss"] == kept["loss"] == swp["loss"]  # same seeds, same numbers
