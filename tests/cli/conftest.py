"""Shared fixtures of the training-command tests: six tiny synthetic cases, one thread."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny tensors on a shared CPU: one thread is faster and steadier."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six 16^3 synthetic BraTS-layout cases (seed 1), made once per test module."""
    from swapseg.data.synthetic import synthesize

    data = tmp_path_factory.mktemp("synth")
    synthesize(data, 6, 16, seed=1)
    return data
