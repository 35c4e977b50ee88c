"""Scopes, globs and the storage-keyed dedup table."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from swapseg.offload.tracker import DedupTable, Entry, ScopeTracker, scope_matches


def test_scope_matches_ancestors_and_globs():
    assert scope_matches("decoder.0.loc1.0", ("decoder.*",))
    assert scope_matches("decoder.0.loc1.0", ("decoder",))
    assert scope_matches("decoder.0.loc1.0", ("decoder.0.loc1",))
    assert not scope_matches("encoder.0.conv.0", ("decoder.*",))
    assert not scope_matches("decoder_x.0", ("decoder",))
    assert scope_matches("", ("*",)) and not scope_matches("", ("decoder.*",))
    assert not scope_matches("decoder.0", ())


def test_tracker_stack_and_params():
    model = nn.Sequential(nn.Linear(3, 3), nn.Sequential(nn.ReLU(), nn.Linear(3, 2)))
    tr = ScopeTracker(model)
    seen = []
    model[1][1].register_forward_pre_hook(lambda m, a: seen.append(tr.scope))
    model(torch.randn(2, 3))
    assert seen == ["1.1"] and tr.stack == []
    assert tr.is_param_or_buffer(model[0].weight)
    assert tr.is_param_or_buffer(model[0].weight.t())  # a view of a parameter
    assert not tr.is_param_or_buffer(torch.randn(3))
    tr.remove()
    model(torch.randn(2, 3))
    assert seen == ["1.1", ""]  # hooks gone: no scope is pushed any more


def test_tracker_stack_survives_an_exception():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(4, 4))
    tr = ScopeTracker(model)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        model(torch.randn(2, 3))  # the second Linear takes 4 features, gets 3
    assert tr.stack == []


def _entry(n: int) -> Entry:
    return Entry(id=n, index=n, scope="", nbytes=4, device=torch.device("cpu"), swap=True)


def test_dedup_views_match_and_versions_split():
    table = DedupTable()
    t = torch.randn(8)
    table.add(t, _entry(0))
    assert table.find(t[2:5]) is not None
    t.add_(1)  # new version: a different snapshot
    assert table.find(t) is None


def test_dedup_dead_storage_never_matches_even_at_the_same_address():
    table = DedupTable()
    hits = 0
    for k in range(50):
        t = torch.full((256,), float(k))
        assert table.find(t) is None  # the previous t is dead, whatever its address
        table.add(t, _entry(k))
        hits += table.find(t) is not None
        del t
    assert hits == 50
    table.prune()
    assert len(table) == 0
