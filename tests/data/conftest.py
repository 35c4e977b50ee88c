"""Tiny NIfTI cases in every supported layout, generated in tmp_path."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from tiny_nifti import SUFFIX_2017, SUFFIX_2023, save, tiny_volumes


@pytest.fixture
def make_case() -> Callable[..., Path]:
    """``make_case(folder, case_id, style="brats2017", seed=0, seg=True, labels=...)``."""

    def make(folder: Path, case_id: str, style: str = "brats2017", seed: int = 0,
             seg: bool = True, labels=(1, 2, 4), ext: str = ".nii.gz") -> Path:
        suffix = SUFFIX_2017 if style == "brats2017" else SUFFIX_2023
        image, labelmap = tiny_volumes(seed, labels=labels)
        case_dir = folder / case_id
        for c, mod in enumerate(("flair", "t1", "t1ce", "t2")):
            save(image[c], case_dir / f"{case_id}{suffix[mod]}{ext}")
        if seg:
            save(labelmap, case_dir / f"{case_id}{suffix['seg']}{ext}")
        return case_dir

    return make


@pytest.fixture
def make_msd() -> Callable[..., Path]:
    """``make_msd(root, n=2, order=("FLAIR","T1w","t1gd","T2w"), test_cases=1)``."""

    def make(root: Path, n: int = 2, order=("FLAIR", "T1w", "t1gd", "T2w"),
             test_cases: int = 1, write_json: bool = True) -> Path:
        names = {"FLAIR": 0, "T1w": 1, "t1gd": 2, "T2w": 3}  # index into tiny_volumes order
        for i in range(n + test_cases):
            image, seg = tiny_volumes(i, labels=(2, 1, 3))
            four_d = np.stack([image[names[o]] for o in order], axis=-1)  # (X, Y, Z, 4)
            sub = "imagesTr" if i < n else "imagesTs"
            save(four_d, root / sub / f"BRATS_{i + 1:03d}.nii.gz")
            if i < n:
                save(seg, root / "labelsTr" / f"BRATS_{i + 1:03d}.nii.gz")
        if write_json:
            (root / "dataset.json").write_text(json.dumps(
                {"name": "BRATS", "modality": {str(k): v for k, v in enumerate(order)},
                 "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor",
                            "3": "enhancing tumour"}}))
        (root / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"macOS junk")
        return root

    return make
