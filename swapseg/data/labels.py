"""Label conventions: raw segmentation labels to the regions WT, TC, ET and back.

Each dataset year numbers the tumor sub-regions differently; the evaluation regions are the
same nested sets everywhere: whole tumor (WT) contains tumor core (TC) contains enhancing
tumor (ET). A convention lists which raw label belongs to which regions; going back from
regions to labels, the innermost region wins (ET, then TC, then WT).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from swapseg.errors import InputError

__all__ = ["CONVENTIONS", "REGIONS", "LabelConvention", "check_labels", "labels_to_regions",
           "regions_to_labels"]

#: Evaluation regions, in channel order of every region tensor.
REGIONS = ("WT", "TC", "ET")


@dataclass(frozen=True)
class LabelConvention:
    """One dataset's label numbering."""

    name: str
    #: label value -> human name of the tissue class (0, background, is implicit).
    classes: dict[int, str]
    #: region name -> the raw label values that belong to it.
    regions: dict[str, tuple[int, ...]]

    @property
    def values(self) -> tuple[int, ...]:
        """All allowed label values, background 0 included."""
        return (0, *sorted(self.classes))

    def label_for(self, wt: bool, tc: bool, et: bool) -> int:
        """The raw label of a voxel with the given region memberships (innermost wins)."""
        if et:
            return self._only("ET")
        if tc:
            return self._only_minus("TC", "ET")
        if wt:
            return self._only_minus("WT", "TC")
        return 0

    def _only(self, region: str) -> int:
        (value,) = self.regions[region]
        return value

    def _only_minus(self, outer: str, inner: str) -> int:
        (value,) = tuple(v for v in self.regions[outer] if v not in self.regions[inner])
        return value


CONVENTIONS: dict[str, LabelConvention] = {
    # BraTS 2017-2021 (label 3 was merged into 1 after 2016)
    "brats2017": LabelConvention(
        "brats2017", {1: "necrotic/non-enhancing core", 2: "edema", 4: "enhancing tumor"},
        {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}),
    "brats2023": LabelConvention(
        "brats2023", {1: "non-enhancing tumor core", 2: "surrounding FLAIR hyperintensity",
                      3: "enhancing tumor"},
        {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}),
    # Medical Segmentation Decathlon Task01_BrainTumour
    "msd": LabelConvention(
        "msd", {1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumor"},
        {"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)}),
}


def _convention(name: str) -> LabelConvention:
    try:
        return CONVENTIONS[name]
    except KeyError:
        raise InputError(f"unknown label convention {name!r} "
                         f"(known: {', '.join(CONVENTIONS)})") from None


def check_labels(seg: np.ndarray, convention: str, name: str = "segmentation") -> None:
    """Raise :class:`InputError` if ``seg`` holds a value the convention does not define."""
    conv = _convention(convention)
    values = np.unique(seg)
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)):
            raise InputError(f"{name}: segmentation holds NaN or inf")
        if not np.all(values == np.round(values)):
            bad = values[values != np.round(values)][0]
            raise InputError(f"{name}: label value {bad:g} is not an integer")
    bad = [v for v in values.tolist() if int(v) not in conv.values]
    if bad:
        raise InputError(f"{name}: label value {bad[0]:g} is outside the {convention} "
                         f"convention {list(conv.values)}")


def labels_to_regions(seg: np.ndarray, convention: str) -> np.ndarray:
    """Raw labels ``(*S)`` -> bool regions ``(3, *S)`` in the order of :data:`REGIONS`."""
    conv = _convention(convention)
    seg = np.asarray(seg)
    return np.stack([np.isin(seg, conv.regions[r]) for r in REGIONS])


def regions_to_labels(regions: np.ndarray, convention: str) -> np.ndarray:
    """Regions ``(3, *S)`` (bool, or values thresholded at 0.5) -> uint8 raw labels ``(*S)``.

    The innermost region wins, so a voxel in ET but not in WT (an inconsistent prediction)
    still gets the ET label.
    """
    conv = _convention(convention)
    regions = np.asarray(regions)
    if regions.ndim < 1 or regions.shape[0] != len(REGIONS):
        raise InputError(f"regions must have {len(REGIONS)} channels first, "
                         f"got shape {regions.shape}")
    if regions.dtype != bool:
        regions = regions > 0.5
    wt, tc, et = regions
    out = np.zeros(regions.shape[1:], dtype=np.uint8)
    out[wt] = conv.label_for(True, False, False)
    out[tc] = conv.label_for(True, True, False)
    out[et] = conv.label_for(True, True, True)
    return out
