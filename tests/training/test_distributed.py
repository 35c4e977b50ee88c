import csv
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from _train_helpers import BlobVolumes
from torch.utils.data import DistributedSampler, RandomSampler

from swapseg.training import distributed as d


def test_single_process_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = d.init_from_env(torch.device("cpu"))
    assert info == d.DistInfo() and info.is_main and not info.enabled
    model = torch.nn.Linear(2, 2)
    assert d.wrap_model(model, info, torch.device("cpu")) is model
    assert isinstance(d.make_sampler(BlobVolumes(3), info, 0, torch.Generator()), RandomSampler)
    assert d.broadcast_floats([1.5, 2.0], info) == [1.5, 2.0]


def test_ranks_get_disjoint_shares():
    ds = BlobVolumes(5)
    shares = []
    for rank in range(2):
        s = d.make_sampler(ds, d.DistInfo(rank=rank, world_size=2), 0, torch.Generator())
        assert isinstance(s, DistributedSampler)
        s.set_epoch(3)
        shares.append(list(s))
    assert len(shares[0]) == len(shares[1]) == 3  # 5 cases padded to 6
    assert set(shares[0]) | set(shares[1]) == set(range(5))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, out: str) -> None:
    from swapseg.offload.policy import MemoryPlan, SwapPolicy
    from swapseg.training.config import tiny
    from swapseg.training.loop import build_model, fit

    torch.set_num_threads(1)
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cfg = tiny(out=out, max_epochs=2, plan=MemoryPlan(swap=SwapPolicy(tier="host")))
    model = build_model(cfg)
    fit(model, BlobVolumes(4), BlobVolumes(1, seed=1), cfg, progress=False, echo=lambda s: None)
    torch.save(model.state_dict(), os.path.join(out, f"rank{rank}.pt"))
    d.shutdown(d.DistInfo(rank=rank, world_size=2))


def test_two_process_gloo_ddp(tmp_path):
    if not torch.distributed.is_gloo_available():
        pytest.skip("gloo backend not available")
    mp.start_processes(_rank_main, args=(_free_port(), str(tmp_path)), nprocs=2,
                       start_method="fork")
    a = torch.load(tmp_path / "rank0.pt")
    b = torch.load(tmp_path / "rank1.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k  # DDP kept the replicas identical
    with open(tmp_path / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["steps"] for r in rows] == ["2", "2"]  # each rank saw half of the 4 cases
