"""Fixtures of the prediction tests (the same tiny cases as the evaluation tests)."""

from __future__ import annotations

from pathlib import Path

import pytest
from evalcases import write_cases


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, list[str]]:
    """Two tiny cases (23x19x17, oblique affine) in the BraTS 2018 layout."""
    root = tmp_path / "data"
    return root, write_cases(root, 2)
