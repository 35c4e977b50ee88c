"""Until the engine lands, the training tests run against a null stand-in for it."""

from __future__ import annotations

import pytest
from _train_helpers import null_swap

from swapseg import offload


@pytest.fixture(autouse=True)
def _engine(monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(offload, "swap_activations"):
        monkeypatch.setattr(offload, "swap_activations", null_swap, raising=False)
