"""Training tests: one intra-op thread (tiny tensors; a shared CPU makes 2 threads ~10x
slower through spin-waiting), and a null engine stand-in until the engine lands."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from _train_helpers import null_swap

from swapseg import offload


@pytest.fixture(autouse=True)
def _engine(monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(offload, "swap_activations"):
        monkeypatch.setattr(offload, "swap_activations", null_swap, raising=False)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
