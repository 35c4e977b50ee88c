"""``BratsVolumes``: a torch Dataset of whole preprocessed volumes, cached as .npy.

Decoding four gzip-compressed NIfTI files takes about a second per case; the cache keeps the
preprocessed arrays under ``cache_dir`` so that later epochs (and later runs) skip it. A cache
entry is keyed by the case id, target shape, zoom, and the path, mtime and size of every
source file, so editing a source file or changing the shape makes a new entry.

Several processes may share one cache folder (two runs, DataLoader workers, ``--fold
all``). Every file of an entry is written to a temporary file beside it and renamed into
place (``swapseg.io.atomic_path``), and the ``.json`` that marks the entry complete is
written last: a reader never sees a half-written file, and two writers of the same
entry (their content is the same: preprocessing is deterministic) replace whole files
with whole files. A temporary left by a killed writer is removed by the next writer of
that entry once it is an hour old (younger ones may belong to a live writer).

Augmentation is seeded per DataLoader worker: each process draws from its own generator,
seeded from ``seed`` and ``torch.initial_seed()`` (which PyTorch sets to base_seed + worker_id
in every worker, with a fresh base_seed each epoch). So workers never repeat each other, a
run is reproducible under ``torch.manual_seed``, and no ``worker_init_fn`` is needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from swapseg.data.augment import random_flip_permute
from swapseg.data.labels import labels_to_regions
from swapseg.data.layouts import Case, CaseIndex, find_cases
from swapseg.data.loader import load_case
from swapseg.data.preprocess import PrepInfo, Preprocessed, _as_shape3, preprocess
from swapseg.errors import InputError
from swapseg.io import atomic_path, write_json

__all__ = ["BratsVolumes", "cache_key"]

#: Bump when preprocessing changes, so that old cache entries are not reused.
CACHE_VERSION = 1


def cache_key(case: Case, target_shape: tuple[int, int, int], zoom: int) -> str:
    """A short hash naming the cache entry of ``case`` at this shape and zoom."""
    files = []
    for p in case.files:
        try:
            st = os.stat(p)
        except OSError as exc:
            raise InputError(f"{p}: cannot read ({exc.strerror})") from None
        files.append([str(Path(p).resolve()), st.st_mtime_ns, st.st_size])
    blob = json.dumps([CACHE_VERSION, case.case_id, list(target_shape), zoom, files])
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _with(stem: Path, suffix: str) -> Path:
    return stem.parent / (stem.name + suffix)  # case ids may contain dots


#: Age after which a temporary cache file is taken for a killed writer's.
STALE_TEMPORARY_S = 3600.0


def _remove_stale_temporaries(stem: Path) -> None:
    now = time.time()
    for tmp in stem.parent.glob(f".{stem.name}.*"):
        with contextlib.suppress(OSError):  # another writer may remove it first
            if now - tmp.stat().st_mtime > STALE_TEMPORARY_S:
                tmp.unlink()


class BratsVolumes(Dataset):
    """Whole preprocessed volumes; item = ``{"image", "target", "case_id"}``.

    ``image`` is a FloatTensor (4, D, H, W); ``target`` a FloatTensor (3, D, H, W) of the
    regions WT/TC/ET (all zero for a case without segmentation; see ``has_seg``).
    """

    def __init__(self, cases: list[Case] | CaseIndex | str | Path,
                 target_shape: int | tuple[int, int, int], cache_dir: str | Path | None = None,
                 augment: bool = False, seed: int = 0, zoom: int = 1) -> None:
        if isinstance(cases, (str, Path)):
            cases = find_cases(cases)
        self.cases: list[Case] = list(cases.cases if isinstance(cases, CaseIndex) else cases)
        self.target_shape = _as_shape3(target_shape, "target shape")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.augment = augment
        self.seed = seed
        self.zoom = zoom
        self._rng: np.random.Generator | None = None
        self._rng_key: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.cases)

    @property
    def has_seg(self) -> list[bool]:
        return [c.seg is not None for c in self.cases]

    def load(self, index: int) -> Preprocessed:
        """The preprocessed case, from the cache when it is there (no augmentation)."""
        case = self.cases[index]
        if self.cache_dir is None:
            return preprocess(load_case(case), self.target_shape, self.zoom)
        stem = self.cache_dir / f"{case.case_id}-{cache_key(case, self.target_shape, self.zoom)}"
        meta = _with(stem, ".json")
        if meta.is_file():
            try:
                return self._read_cache(stem, meta)
            except (OSError, ValueError, KeyError, TypeError, EOFError):
                pass  # a damaged or partly deleted entry: rebuild it
        prep = preprocess(load_case(case), self.target_shape, self.zoom)
        _remove_stale_temporaries(stem)
        with atomic_path(_with(stem, ".image.npy")) as tmp:
            np.save(tmp, prep.image)
        if prep.seg is not None:
            with atomic_path(_with(stem, ".seg.npy")) as tmp:
                np.save(tmp, prep.seg)
        write_json(meta, prep.info.to_dict())  # written last: marks the entry complete
        return prep

    @staticmethod
    def _read_cache(stem: Path, meta: Path) -> Preprocessed:
        info = PrepInfo.from_dict(json.loads(meta.read_text()))
        image = np.load(_with(stem, ".image.npy"))
        seg_path = _with(stem, ".seg.npy")
        seg = np.load(seg_path) if seg_path.is_file() else None
        return Preprocessed(image, seg, info)

    def info(self, index: int) -> PrepInfo:
        return self.load(index).info

    def rng(self) -> np.random.Generator:
        """This process's augmentation generator (re-seeded in each new worker)."""
        key = (os.getpid(), torch.initial_seed())
        if self._rng is None or self._rng_key != key:
            self._rng = np.random.default_rng([self.seed, key[1] % 2**63])
            self._rng_key = key
        return self._rng

    def __getitem__(self, index: int) -> dict[str, Any]:
        prep = self.load(index)
        case = self.cases[index]
        if prep.seg is not None:
            target = labels_to_regions(prep.seg, case.convention)  # (3, D, H, W) bool
        else:
            target = np.zeros((3, *prep.image.shape[1:]), dtype=bool)
        image = prep.image
        if self.augment:
            image, target = random_flip_permute(image, target, self.rng())
        return {"image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
                "target": torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32)),
                "case_id": case.case_id}
