"""Checking a dataset folder: layout, shapes, spacings, label sets, and every problem found.

``check_dataset`` decodes every case with the same loader as training (so a corrupt file,
NaN voxel or stray label is found), or with ``quick`` only reads the headers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from swapseg.data.layouts import Case, find_cases
from swapseg.data.loader import _check_same_grid, load_case, read_header
from swapseg.errors import InputError
from swapseg.progress import Progress, track

__all__ = ["CaseSummary", "DatasetReport", "check_dataset", "check_headers"]


@dataclass
class CaseSummary:
    case_id: str
    shape: list[int] | None = None
    spacing_mm: list[float] | None = None
    labels: list[int] | None = None
    #: size of the bounding box of nonzero voxels (full check only)
    brain_box: list[int] | None = None
    has_seg: bool = False
    problem: str | None = None


@dataclass
class DatasetReport:
    root: str
    layout: str
    cases: list[CaseSummary] = field(default_factory=list)
    #: problems with the folder structure (cases left out before loading)
    layout_problems: list[str] = field(default_factory=list)
    skip_bad: bool = False

    @property
    def problems(self) -> list[str]:
        return self.layout_problems + [c.problem for c in self.cases if c.problem]

    @property
    def good_cases(self) -> list[CaseSummary]:
        return [c for c in self.cases if c.problem is None]

    @property
    def usable(self) -> bool:
        """No problem at all, or (with skip_bad) at least one good case left."""
        return bool(self.good_cases) and (self.skip_bad or not self.problems)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(n_cases=len(self.cases), n_good_cases=len(self.good_cases),
                 problems=self.problems, usable=self.usable)
        return d

    def lines(self) -> list[str]:
        """The human-readable report."""
        good = self.good_cases
        out = [f"folder:   {self.root}", f"layout:   {self.layout}",
               f"cases:    {len(self.cases) + len(self.layout_problems)} found, "
               f"{len(good)} good, {sum(c.has_seg for c in good)} with segmentation"]
        out.append("shapes:   " + _counts("x".join(map(str, c.shape)) for c in good if c.shape))
        out.append("spacings: " + _counts("x".join(f"{s:g}" for s in c.spacing_mm) + " mm"
                                          for c in good if c.spacing_mm))
        out.append("labels:   " + _counts("{" + ",".join(map(str, c.labels)) + "}"
                                          for c in good if c.labels is not None))
        boxes = [c.brain_box for c in good if c.brain_box]
        if boxes:
            big = [max(b[a] for b in boxes) for a in range(3)]
            fit = [16 * -(-v // 16) for v in big]  # the smallest multiple of 16 that holds it
            out.append(f"brain:    largest box {'x'.join(map(str, big))} voxels (a target of "
                       f"{'x'.join(map(str, fit))} or larger keeps every brain whole)")
        probs = self.problems
        out.append(f"problems: {len(probs) or 'none'}")
        out += [f"  - {p}" for p in probs]
        if probs and self.skip_bad:
            out.append(f"left out (--skip-bad): {len(probs)} bad case(s)")
        out.append("usable:   " + ("yes" if self.usable else "no"))
        return out


def _counts(values: Iterable[str]) -> str:
    c = Counter(values)
    return ", ".join(f"{k} ({n})" for k, n in sorted(c.items())) or "-"


def _extent(profile: np.ndarray) -> int:
    idx = np.flatnonzero(profile)
    return int(idx[-1] - idx[0] + 1) if idx.size else 0


def check_headers(case: Case) -> tuple[list[int], list[float]]:
    """Shapes and affines of every file agree (headers only, no voxels decoded); a
    segmentation is one volume. Returns the grid's shape and spacing in mm."""
    ref_path, *others = case.files
    ref = read_header(ref_path)
    for path in others:
        _check_same_grid(ref, ref_path, read_header(path), path, tuple(ref.shape[:3]))
    if case.seg is not None:
        shape = tuple(read_header(case.seg).shape)
        if [v for v in shape[3:] if v != 1]:
            raise InputError(f"{case.seg}: shape {shape} holds more than one volume; a "
                             "segmentation is one 3-D label volume")
    return [int(v) for v in ref.shape[:3]], [float(z) for z in ref.header.get_zooms()[:3]]


def _check_headers(case: Case, s: CaseSummary) -> None:
    s.shape, s.spacing_mm = check_headers(case)


def _check_case(case: Case, quick: bool) -> CaseSummary:
    s = CaseSummary(case.case_id, has_seg=case.seg is not None)
    try:
        if quick:
            _check_headers(case, s)
            return s
        loaded = load_case(case)
        s.shape = list(loaded.image.shape[1:])
        s.spacing_mm = list(loaded.spacing)
        brain = np.any(loaded.image != 0, axis=0)
        s.brain_box = [_extent(brain.any(axis=tuple(a for a in range(3) if a != ax)))
                       for ax in range(3)]
        if loaded.seg is not None:
            s.labels = [int(v) for v in np.unique(loaded.seg)]
    except InputError as exc:
        s.problem = f"case {case.case_id}: {exc}"
    return s


def check_dataset(root: str | Path, skip_bad: bool = False, quick: bool = False,
                  progress: Progress = False) -> DatasetReport:
    """Check every case under ``root``; raises InputError only for a missing/empty folder."""
    index = find_cases(root, skip_bad=True)
    report = DatasetReport(str(root), index.layout, layout_problems=list(index.problems),
                           skip_bad=skip_bad)
    report.cases = [_check_case(c, quick)
                    for c in track(index.cases, "checking", progress,
                                   label=lambda c: c.case_id)]
    return report
