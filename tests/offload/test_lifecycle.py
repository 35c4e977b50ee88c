"""The entry lifecycle: the transition table, illegal moves, resident bytes from states."""

from __future__ import annotations

import itertools
import typing

import pytest
import torch
from _late_transport import LateFactory
from _swap_models import isensee

from swapseg.offload import SwapEngine, SwapPolicy
from swapseg.offload.lifecycle import RESIDENT, TRANSITIONS, Entry, IllegalTransition, State


def _entry(state: State = "device", nbytes: int = 64) -> Entry:
    return Entry(id=3, index=0, scope="enc.1", nbytes=nbytes, device=torch.device("cpu"),
                 swap=True, state=state)


def test_table_covers_every_state_and_released_is_terminal():
    states = set(typing.get_args(State))
    assert set(TRANSITIONS) == states and RESIDENT <= states
    assert TRANSITIONS["released"] == frozenset()
    assert all("released" in TRANSITIONS[s] for s in states - {"released"})
    reach, todo = {"device"}, ["device"]  # every state is reachable from birth
    while todo:
        for nxt in TRANSITIONS[todo.pop()] - reach:
            reach.add(nxt)
            todo.append(nxt)
    assert reach == states


@pytest.mark.parametrize("old, new", list(itertools.product(typing.get_args(State), repeat=2)))
def test_each_move_is_legal_or_raises(old, new):
    e = _entry(old)
    if new in TRANSITIONS[old]:
        delta = e.move(new)
        assert e.state == new
        assert delta == 64 * ((new in RESIDENT) - (old in RESIDENT))
    else:
        with pytest.raises(IllegalTransition, match=f"{old} -> {new}"):
            e.move(new)
        assert e.state == old  # a refused move changes nothing


def test_a_round_trip_of_states_returns_resident_bytes_to_zero():
    e, total = _entry(), 64  # born resident
    for s in ("leaving", "host", "returning", "back", "host", "returning", "host", "released"):
        total += e.move(s)
        assert total == (64 if e.resident else 0)
    assert e.released and not e.resident


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_engine_resident_bytes_follow_from_states_under_late_copies():
    """At every module boundary of forward and backward, the engine's resident counter
    equals the sum over its entries in resident states, with copies landing late."""
    torch.manual_seed(0)
    model = isensee()
    engine = SwapEngine(model, SwapPolicy(prefetch=2), transport=LateFactory(seed=5))
    checks: list[int] = []
    seen_states: set[str] = set()

    def check(*_):  # hooks run on this thread, as do all of the engine's state changes
        assert engine.resident_bytes() == engine.stats.saved_bytes
        seen_states.update(engine.states())
        checks.append(engine.stats.saved_bytes)

    hooks = [m.register_forward_hook(check) for m in model.modules()]
    hooks += [m.register_full_backward_hook(check) for m in model.modules()
              if isinstance(m, torch.nn.Conv3d)]
    x = torch.randn(1, 2, 16, 16, 16)
    try:
        with torch.autograd.graph.saved_tensors_hooks(engine.pack, engine.unpack):
            for _ in range(2):
                model(x).square().mean().backward()
                check()
                assert engine.stats.saved_bytes == 0
    finally:
        for h in hooks:
            h.remove()
        engine.close()
    assert max(checks) > 0 and engine.stats.peak_saved_bytes >= max(checks)
    assert {"leaving", "host"} <= seen_states  # late copies were seen in flight
    assert engine.states() == {} and engine.resident_bytes() == 0
