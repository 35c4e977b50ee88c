"""attach_swapping: a MONAI SupervisedTrainer under swapping, bitwise equal to without."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

pytest.importorskip("ignite")
from _tiny import N_BATCHES, TinySeg, assert_bitwise_equal, batches
from monai.engines import SupervisedTrainer

from swapseg.errors import InputError
from swapseg.integrations._plan import SwapPolicy
from swapseg.integrations.monai import attach_swapping


def _trainer(epochs: int = 2, fail: bool = False) -> SupervisedTrainer:
    torch.manual_seed(0)
    net = TinySeg()
    data = [{"image": x, "label": y} for x, y in batches(0)]

    def loss(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if fail:
            raise RuntimeError("boom")
        return F.cross_entropy(pred, y)

    return SupervisedTrainer(device=torch.device("cpu"), max_epochs=epochs,
                             train_data_loader=data, network=net, loss_function=loss,
                             optimizer=torch.optim.Adam(net.parameters(), lr=1e-2),
                             amp=False)


def test_swapped_run_matches_plain_run_bitwise() -> None:
    plain, swapped, short = _trainer(), _trainer(), _trainer(epochs=1)
    stats = attach_swapping(swapped, SwapPolicy(prefetch=3))
    plain.run()
    swapped.run()
    short.run()
    assert_bitwise_equal(plain.network, swapped.network)
    with pytest.raises(AssertionError):  # the check can fail
        assert_bitwise_equal(plain.network, short.network)
    assert stats.steps == 2 * N_BATCHES and stats.backwards == 2 * N_BATCHES
    assert stats.swapped > 0 and stats.bytes_out > 0 and stats.bytes_in == stats.bytes_out


def test_error_in_an_iteration_closes_the_context() -> None:
    trainer = _trainer(fail=True)
    stats = attach_swapping(trainer, SwapPolicy())
    with pytest.raises(RuntimeError, match="boom"):
        trainer.run()
    assert torch._C._autograd._top_saved_tensors_default_hooks(False) is None
    assert stats.steps == 1 and stats.backwards == 0


def test_bad_targets_are_input_errors() -> None:
    with pytest.raises(InputError, match="MONAI trainer"):
        attach_swapping(object(), SwapPolicy())  # type: ignore[arg-type]
    trainer = _trainer()
    attach_swapping(trainer, SwapPolicy())
    with pytest.raises(InputError, match="already attached"):
        attach_swapping(trainer, SwapPolicy())
