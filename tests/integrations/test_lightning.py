"""SwapCallback: swapping inside Lightning's training steps, bitwise equal to no swapping."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

pl = pytest.importorskip("lightning.pytorch")

from _tiny import N_BATCHES, TinySeg, assert_bitwise_equal, batches  # noqa: E402

from swapseg.integrations._plan import MemoryPlan, SwapPolicy  # noqa: E402
from swapseg.integrations.lightning import SwapCallback  # noqa: E402


class Module(pl.LightningModule):
    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.net = TinySeg()
        self.fail_at = fail_at

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        if batch_idx == self.fail_at:
            raise RuntimeError("boom")
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def _loader(data: list) -> DataLoader:
    """The batches as they are: a loader over the list, one batch per item."""
    return DataLoader(data, batch_size=None, shuffle=False)


def _fit(callbacks: list, fail_at: int | None = None, epochs: int = 1) -> Module:
    torch.manual_seed(0)
    module = Module(fail_at)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", callbacks=callbacks,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=_loader(batches(0)),
                val_dataloaders=_loader(batches(1)[:1]))
    return module


@pytest.mark.parametrize("plan", [SwapPolicy(prefetch=2),
                                  MemoryPlan(swap=SwapPolicy(exclude=("net.head",)))])
def test_callback_swaps_and_matches_plain_training(plan: SwapPolicy | MemoryPlan) -> None:
    plain = _fit([])
    cb = SwapCallback(plan)
    swapped = _fit([cb], epochs=2)
    plain2 = _fit([], epochs=2)
    assert_bitwise_equal(swapped, plain2)
    with pytest.raises(AssertionError):  # the check can fail: one epoch is not two
        assert_bitwise_equal(plain, plain2)
    s = cb.stats
    assert s.steps == 2 * N_BATCHES  # training steps only: validation saves nothing
    assert s.backwards == 2 * N_BATCHES
    assert s.swapped > 0 and s.bytes_out > 0
    assert s.bytes_in == s.bytes_out  # every swapped tensor came back for its backward
    assert s.device_bytes == 0 and cb.swapper.current is None


def test_exception_closes_the_swap_context() -> None:
    cb = SwapCallback(SwapPolicy())
    with pytest.raises(RuntimeError, match="boom"):
        _fit([cb], fail_at=1)
    assert cb.stats.steps == 1  # the first step finished, the second failed in forward
    assert cb.swapper.current is None
    assert torch._C._autograd._top_saved_tensors_default_hooks(False) is None
