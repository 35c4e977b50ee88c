import json

import pytest

from swapseg.errors import InputError
from swapseg.training.crossval import fold_split, load_or_make_splits, make_splits

IDS = [f"c{i:02d}" for i in range(11)]


def test_five_folds_partition_and_proportions():
    s = make_splits(IDS, 5, seed=3)
    tests = [c for sp in s["splits"] for c in sp["test"]]
    assert sorted(tests) == IDS  # every case tested exactly once
    for k, sp in enumerate(s["splits"]):
        parts = sp["train"] + sp["val"] + sp["test"]
        assert sorted(parts) == IDS and len(set(parts)) == len(IDS)
        assert sp["val"] == s["splits"][(k + 1) % 5]["test"]
    # 11 cases in 5 parts: sizes 3,2,2,2,2 -> fold 0 trains on 11-3-2 = 6
    assert [len(sp["test"]) for sp in s["splits"]] == [3, 2, 2, 2, 2]
    assert len(s["splits"][0]["train"]) == 6


def test_seeded_and_order_independent():
    assert make_splits(IDS, 5, 0) == make_splits(list(reversed(IDS)), 5, 0)
    assert make_splits(IDS, 5, 0)["splits"] != make_splits(IDS, 5, 1)["splits"]


def test_reused_when_present(tmp_path):
    p = tmp_path / "splits.json"
    first = load_or_make_splits(p, IDS, 5, seed=0)
    again = load_or_make_splits(p, IDS, 5, seed=99)  # seed ignored: the file wins
    assert again == first == json.loads(p.read_text())
    assert fold_split(again, 2) == first["splits"][2]


def test_mismatches_are_input_errors(tmp_path):
    p = tmp_path / "splits.json"
    load_or_make_splits(p, IDS, 5, seed=0)
    with pytest.raises(InputError, match="other cases"):
        load_or_make_splits(p, IDS[:-1], 5, seed=0)
    with pytest.raises(InputError, match="5 folds, not 4"):
        load_or_make_splits(p, IDS, 4, seed=0)
    with pytest.raises(InputError, match="cannot be split"):
        make_splits(IDS[:3], 5, 0)
    with pytest.raises(InputError, match="fold 7"):
        fold_split(make_splits(IDS, 5, 0), 7)
