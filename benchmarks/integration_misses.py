"""Prefetch misses per training step of each integration (MONAI, Lightning, StepSwapper).

Each integration trains a U-Net with skip connections (MONAI's DynUNet, 4 levels) for a
few steps, in two settings: plain blocks with ``SwapPolicy(tier="host", prefetch=1)``, and
residual blocks with ``prefetch=4``, and prints the misses of every step, read as
differences of the integration's cumulative stats, which both the engine before the
run-long rewrite (a context per step) and after it report. Run it against any source
tree::

    PYTHONPATH=/work/main python benchmarks/integration_misses.py      # before
    PYTHONPATH=. python benchmarks/integration_misses.py               # after

Results: benchmarks/results/2026-12-07-integration-misses.md.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.nn import functional as F

import swapseg

STEPS = 4


#: (name, DynUNet res_block, prefetch)
SETTINGS = (("plain blocks, prefetch 1", False, 1), ("residual blocks, prefetch 4", True, 4))
_SETTING = {"res_block": False, "prefetch": 1}


def _net() -> torch.nn.Module:
    from monai.networks.nets import DynUNet
    torch.manual_seed(0)
    return DynUNet(spatial_dims=3, in_channels=1, out_channels=2, kernel_size=[3, 3, 3, 3],
                   strides=[1, 2, 2, 2], upsample_kernel_size=[2, 2, 2], filters=[4, 8, 16, 32],
                   norm_name="instance", res_block=_SETTING["res_block"])


def _data(side: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(1, 1, side, side, side, generator=g),
             torch.randint(0, 2, (1, side, side, side), generator=g)) for _ in range(STEPS)]


def _policy():
    from swapseg.integrations._plan import SwapPolicy
    return SwapPolicy(tier="host", prefetch=_SETTING["prefetch"])


def _per_step(totals: list[int]) -> list[int]:
    return [b - a for a, b in zip([0, *totals], totals, strict=False)]


def monai_misses(side: int) -> list[int]:
    from ignite.engine import Events
    from monai.engines import SupervisedTrainer

    from swapseg.integrations.monai import attach_swapping
    net = _net()
    data = [{"image": x, "label": y} for x, y in _data(side)]
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=1, train_data_loader=data,
                                network=net, loss_function=F.cross_entropy,
                                optimizer=torch.optim.SGD(net.parameters(), lr=1e-2), amp=False)
    stats = attach_swapping(trainer, _policy())
    totals: list[int] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED,
                              lambda _: totals.append(stats.prefetch_misses))
    trainer.run()
    return _per_step(totals)


def lightning_misses(side: int) -> list[int]:
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from swapseg.integrations.lightning import SwapCallback

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _net()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1e-2)

    cb = SwapCallback(_policy())
    totals: list[int] = []

    class Read(pl.Callback):
        def on_train_batch_end(self, *args) -> None:
            totals.append(cb.stats.prefetch_misses)

    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", callbacks=[cb, Read()], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(Module(), train_dataloaders=DataLoader(_data(side), batch_size=None))
    return _per_step(totals)


def steps_misses(side: int) -> list[int]:
    from swapseg.integrations._plan import as_plan
    from swapseg.integrations.steps import StepSwapper
    net = _net()
    swapper = StepSwapper(as_plan(_policy()))
    totals = []
    for x, y in _data(side):
        with swapper.step(net):
            F.cross_entropy(net(x), y).backward()
        totals.append(swapper.stats.prefetch_misses)
    return _per_step(totals)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=32, help="cube side of the input")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out: dict = {"source": swapseg.__file__, "side": args.side, "steps": STEPS}
    for name, res_block, prefetch in SETTINGS:
        _SETTING.update(res_block=res_block, prefetch=prefetch)
        out[name] = {"monai": monai_misses(args.side), "lightning": lightning_misses(args.side),
                     "step_swapper": steps_misses(args.side)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
