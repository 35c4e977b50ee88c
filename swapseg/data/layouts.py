"""Finding BraTS cases on disk, in every common release layout.

Supported layouts (the name is what :func:`find_cases` reports):

- ``brats2017-2018``: ``<root>/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii[.gz]``;
  ``brats2017-2018-hgg-lgg`` when the cases sit in ``HGG/`` and ``LGG/`` subfolders.
- ``brats2019-2021``: the same file names, cases named ``BraTS19_*``, ``BraTS20_*`` or
  ``BraTS2021_*`` (``-hgg-lgg`` again when split by grade).
- ``brats2023-gli``: ``<case>/<case>-{t2f,t1n,t1c,t2w,seg}.nii.gz`` (labels 1/2/3).
- ``msd-task01``: Medical Segmentation Decathlon Task01_BrainTumour, one 4-D file per case in
  ``imagesTr/`` (and ``imagesTs/``), labels in ``labelsTr/``, channels named in ``dataset.json``.

A case without a segmentation is allowed (for prediction). A case with a missing modality
is a problem: :func:`find_cases` raises, or with ``skip_bad`` lists it and leaves it out.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from swapseg.errors import InputError

__all__ = ["MODALITIES", "Case", "CaseIndex", "find_cases", "looks_like_case"]

#: Channel order of every image array.
MODALITIES = ("flair", "t1", "t1ce", "t2")

_NII = (".nii.gz", ".nii")
_GRADE_DIRS = ("hgg", "lgg")
# file-name suffix of each modality (and the segmentation), per naming style
_SUFFIXES = {
    "brats2017": {"flair": "_flair", "t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "seg": "_seg"},
    "brats2023": {"flair": "-t2f", "t1": "-t1n", "t1ce": "-t1c", "t2": "-t2w", "seg": "-seg"},
}
_YEAR_2019_2021 = re.compile(r"^BraTS(19|20)_|^BraTS2021_", re.IGNORECASE)
# MSD dataset.json modality names -> ours
_MSD_NAMES = {"flair": "flair", "t1w": "t1", "t1gd": "t1ce", "t2w": "t2"}


@dataclass(frozen=True)
class Case:
    """One subject: where its images and (optional) segmentation are."""

    case_id: str
    #: modality -> file, or one 4-D file holding every modality (MSD).
    images: dict[str, Path] | Path
    seg: Path | None
    #: label convention name, a key of ``swapseg.data.labels.CONVENTIONS``.
    convention: str
    #: for a 4-D file: the channel index of each of MODALITIES, in MODALITIES order.
    channels: tuple[int, ...] | None = None

    @property
    def files(self) -> list[Path]:
        """Every file this case reads, images first."""
        imgs = list(self.images.values()) if isinstance(self.images, dict) else [self.images]
        return imgs + ([self.seg] if self.seg is not None else [])


@dataclass
class CaseIndex:
    """What :func:`find_cases` found."""

    root: Path
    layout: str
    cases: list[Case] = field(default_factory=list)
    #: one line per bad case that was left out (only with ``skip_bad``).
    problems: list[str] = field(default_factory=list)


def _strip_nii(name: str) -> str | None:
    for ext in _NII:
        if name.endswith(ext) and not name.startswith("._"):
            return name[: -len(ext)]
    return None


def _nifti_files(folder: Path) -> dict[str, Path]:
    """Stem -> path of the NIfTI files directly inside ``folder``."""
    out = {}
    for p in sorted(folder.iterdir()):
        stem = _strip_nii(p.name)
        if stem is not None and p.is_file():
            out[stem] = p
    return out


def _style_of(stems: list[str]) -> str | None:
    for style in ("brats2023", "brats2017"):
        if any(s.endswith(suf) for s in stems for suf in _SUFFIXES[style].values()):
            return style
    return None


def _case_from_dir(folder: Path, style: str) -> tuple[Case | None, str | None]:
    """A case built from one folder, or a problem line naming what is missing."""
    files = _nifti_files(folder)
    found: dict[str, Path] = {}
    for key, suf in _SUFFIXES[style].items():
        hits = [p for stem, p in files.items() if stem.endswith(suf)]
        if len(hits) > 1:
            return None, (f"case {folder.name}: several {key} files in {folder}: "
                          f"{', '.join(p.name for p in hits)}")
        if hits:
            found[key] = hits[0]
    missing = [m for m in MODALITIES if m not in found]
    if missing:
        return None, (f"case {folder.name}: missing modality {', '.join(missing)} "
                      f"(no *{_SUFFIXES[style][missing[0]]}.nii[.gz] in {folder})")
    images = {m: found[m] for m in MODALITIES}
    return Case(folder.name, images, found.get("seg"), style), None


def _case_dirs(root: Path) -> tuple[list[Path], bool]:
    """Candidate case folders under ``root`` and whether they were split into HGG/LGG."""
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    grades = [p for p in subdirs if p.name.lower() in _GRADE_DIRS]
    if grades:
        inner = [q for g in grades for q in sorted(g.iterdir()) if q.is_dir()]
        return inner, True
    return subdirs, False


def _find_brats(root: Path, skip_bad: bool) -> CaseIndex:
    dirs, graded = _case_dirs(root)
    cases: list[Case] = []
    problems: list[str] = []
    styles: set[str] = set()
    for folder in dirs:
        stems = list(_nifti_files(folder))
        style = _style_of(stems)
        if style is None:
            if stems:  # NIfTI files, but none named like a BraTS modality
                problems.append(f"case {folder.name}: no file named like a BraTS modality "
                                f"in {folder}")
            continue
        styles.add(style)
        case, problem = _case_from_dir(folder, style)
        if case is not None:
            cases.append(case)
        else:
            problems.append(problem or f"case {folder.name}: unreadable")
    layout = "+".join(_layout_name(style, cases, graded) for style in sorted(styles))
    return _finish(root, layout or "unknown", cases, problems, skip_bad)


def _layout_name(style: str, cases: list[Case], graded: bool) -> str:
    if style == "brats2023":
        return "brats2023-gli"
    ids = [c.case_id for c in cases if c.convention == style]
    year = "brats2019-2021" if ids and all(_YEAR_2019_2021.match(i) for i in ids) \
        else "brats2017-2018"
    return year + ("-hgg-lgg" if graded else "")


def _msd_channels(root: Path) -> tuple[int, ...]:
    """Channel of each of MODALITIES in the 4-D files, from dataset.json when present."""
    meta = root / "dataset.json"
    if not meta.is_file():
        return (0, 1, 2, 3)  # the published Task01 order: FLAIR, T1w, t1gd, T2w
    try:
        modality = json.loads(meta.read_text())["modality"]
        ours = {_MSD_NAMES[str(v).lower()]: int(k) for k, v in modality.items()}
        return tuple(ours[m] for m in MODALITIES)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"{meta}: cannot read the modality table ({exc!r})") from None


def _find_msd(root: Path, skip_bad: bool) -> CaseIndex:
    channels = _msd_channels(root)
    labels = _nifti_files(root / "labelsTr") if (root / "labelsTr").is_dir() else {}
    cases: list[Case] = []
    for sub in ("imagesTr", "imagesTs"):
        if not (root / sub).is_dir():
            continue
        for stem, path in _nifti_files(root / sub).items():
            seg = labels.get(stem) if sub == "imagesTr" else None
            cases.append(Case(stem, path, seg, "msd", channels))
    problems = [f"label {p} has no image in {root / 'imagesTr'}"
                for stem, p in labels.items() if not (root / "imagesTr").is_dir()
                or stem not in _nifti_files(root / "imagesTr")]
    return _finish(root, "msd-task01", cases, problems, skip_bad)


def looks_like_case(folder: Path) -> bool:
    """Whether ``folder`` itself holds a BraTS case's modality files (not a dataset)."""
    stems = list(_nifti_files(folder))
    return any(s.endswith(suf) for s in stems for style in _SUFFIXES.values()
               for key, suf in style.items() if key != "seg")


def _finish(root: Path, layout: str, cases: list[Case], problems: list[str],
            skip_bad: bool) -> CaseIndex:
    if problems and not skip_bad:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise InputError(problems[0] + more)
    if not cases and looks_like_case(root):
        raise InputError(f"{root}: this looks like a single case; pass its parent folder")
    if not cases:
        detail = f"; {len(problems)} bad cases left out" if problems else ""
        raise InputError(f"{root}: no BraTS or MSD cases found{detail}")
    return CaseIndex(root, layout, cases, problems)


def find_cases(root: str | Path, skip_bad: bool = False) -> CaseIndex:
    """Discover the cases under ``root`` and the layout they are stored in.

    Raises :class:`InputError` for a missing or empty folder, and for the first bad case
    unless ``skip_bad``, in which case bad cases are listed in ``.problems`` and left out.
    Only file names are checked here; :func:`swapseg.data.brats.load_case` checks contents.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: no such folder")
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    try:
        if (root / "imagesTr").is_dir() or (root / "imagesTs").is_dir():
            return _find_msd(root, skip_bad)
        return _find_brats(root, skip_bad)
    except InputError:
        # a release folder wrapped in one more (MICCAI_BraTS_2018_Data_Training/, a zip's
        # top folder): look one level down before giving up
        inner = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        if len(inner) == 1 and not _nifti_files(root):
            try:
                return find_cases(inner[0], skip_bad)
            except InputError:
                pass
        raise
