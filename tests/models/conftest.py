"""A user's own model file in a fresh current folder that is not on the import path."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

USER_NET = '''
import torch.nn as nn


def build(channels=2):
    return nn.Sequential(nn.Conv3d(channels, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 2, 1))
'''


@pytest.fixture
def user_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """tmp_path as the current folder, holding usernet_e20.py, sub/deep_e20.py and a
    broken_e20.py; the import path and module table are restored afterwards."""
    (tmp_path / "usernet_e20.py").write_text(USER_NET)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deep_e20.py").write_text(USER_NET)
    (tmp_path / "broken_e20.py").write_text("def build(:\n")
    monkeypatch.chdir(tmp_path)
    # as under the `swapseg` command: the current folder is not on the import path
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if "e20" in name:
            del sys.modules[name]
