"""Shared fixtures: the real BraTS sample (skipped when absent) and the cuda marker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def brats_sample_dir() -> Path:
    env = os.environ.get("SWAPSEG_BRATS_SAMPLE")
    return Path(env) if env else REPO.parent / "shared" / "data" / "brats18-sample"


@pytest.fixture(scope="session")
def brats_sample() -> Path:
    """The 12 real BraTS 2018 cases; the test is skipped where they are absent."""
    path = brats_sample_dir()
    if not path.is_dir():
        pytest.skip(f"real BraTS sample not found at {path}")
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
