"""K-fold splits, fixed by a seed and persisted to ``splits.json``.

The cases are shuffled once with the seed and cut into ``folds`` near-equal parts.
Fold k tests on part k, validates on part k+1 (mod folds) and trains on the rest, so
with 5 folds every case is tested exactly once and each fold is 60/20/20 (the paper's
171/57/57 of 285). The splits are stratified by nothing. An existing splits.json is
reused as long as it lists the same cases, so all folds of a run, and a resumed run,
see the same partition.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from swapseg.errors import InputError
from swapseg.io import read_json_record, write_json

__all__ = ["make_splits", "read_splits", "load_or_make_splits", "fold_split"]


def make_splits(case_ids: list[str], folds: int, seed: int) -> dict[str, Any]:
    """Seeded k-fold partition: ``{"seed", "folds", "cases", "splits": [{train, val, test}]}``."""
    ids = sorted(set(case_ids))
    if len(ids) != len(case_ids):
        raise InputError("duplicate case ids in the data set")
    if len(ids) < folds:
        raise InputError(f"{len(ids)} cases cannot be split into {folds} folds")
    order = list(ids)
    random.Random(seed).shuffle(order)
    # near-equal parts: the first len % folds parts get one extra case
    size, extra = divmod(len(order), folds)
    parts, start = [], 0
    for k in range(folds):
        stop = start + size + (1 if k < extra else 0)
        parts.append(sorted(order[start:stop]))
        start = stop
    splits = []
    for k in range(folds):
        val_k = (k + 1) % folds
        train = sorted(c for j, p in enumerate(parts) if j not in (k, val_k) for c in p)
        splits.append({"train": train, "val": parts[val_k], "test": parts[k]})
    return {"seed": seed, "folds": folds, "cases": ids, "splits": splits}


def read_splits(path: str | Path, case_ids: list[str], folds: int) -> dict[str, Any]:
    """The splits in ``path``; InputError unless they list ``case_ids`` in ``folds`` folds."""
    path = Path(path)
    splits = read_json_record(path, "splits", "splits", "splits file")
    if sorted(splits.get("cases", [])) != sorted(case_ids):
        raise InputError(f"{path} lists other cases than the data set; "
                         "delete it or use another --out")
    if splits.get("folds") != folds:
        raise InputError(f"{path} has {splits.get('folds')} folds, not {folds}")
    return splits


def load_or_make_splits(path: str | Path, case_ids: list[str], folds: int,
                        seed: int) -> dict[str, Any]:
    """Read ``path`` if it exists and matches the cases and fold count; else write it."""
    path = Path(path)
    if path.exists():
        return read_splits(path, case_ids, folds)
    splits = make_splits(case_ids, folds, seed)
    write_json(path, splits)
    return splits


def fold_split(splits: dict[str, Any], fold: int) -> dict[str, list[str]]:
    """``{"train": [...], "val": [...], "test": [...]}`` of one fold."""
    if not 0 <= fold < len(splits["splits"]):
        raise InputError(f"fold {fold} out of range 0..{len(splits['splits']) - 1}")
    return splits["splits"][fold]
