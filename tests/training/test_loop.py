import csv
import math

import pytest
import torch
from _train_helpers import BlobVolumes

from swapseg.models.unet3d import Isensee3DUNet
from swapseg.training import epochs
from swapseg.training.checkpoint import load_checkpoint
from swapseg.training.config import tiny
from swapseg.training.loop import NonFiniteLoss, build_model, fit
from swapseg.training.runlog import LOG_COLUMNS

SILENT = {"progress": False, "echo": lambda s: None}


def _rows(run):
    with open(run / "log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_fit_writes_log_and_checkpoints(tmp_path):
    cfg = tiny(out=str(tmp_path / "run"), max_epochs=3, lr=5e-3)
    model = build_model(cfg)
    res = fit(model, BlobVolumes(4), BlobVolumes(2, seed=1), cfg, **SILENT)
    run = tmp_path / "run"
    rows = _rows(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert tuple(rows[0]) == LOG_COLUMNS
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    for r in rows:
        assert 0.0 <= float(r["data_wait_share"]) <= 1.0
        assert 0.0 <= float(r["val_dice_WT"]) <= 1.0 and int(r["steps"]) == 4
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert last["epoch"] == 3 and last["global_step"] == 12 and res["epochs"] == 3
    assert best["epoch"] == res["best_epoch"]
    rebuilt = Isensee3DUNet(**last["model_kwargs"])
    rebuilt.load_state_dict(last["model"])  # the checkpoint rebuilds the model
    assert last["config"]["max_epochs"] == 3


def test_resume_equals_uninterrupted_run(tmp_path):
    data, val = BlobVolumes(3), BlobVolumes(2, seed=1)
    straight = tiny(out=str(tmp_path / "a"), max_epochs=3, dropout=0.3)
    m_a = build_model(straight)
    fit(m_a, data, val, straight, **SILENT)

    first = tiny(out=str(tmp_path / "b"), max_epochs=2, dropout=0.3)
    fit(build_model(first), data, val, first, **SILENT)
    torch.manual_seed(123)  # a resumed process starts from other RNG states
    m_b = build_model(first)  # fresh weights, replaced by the checkpoint's
    res = fit(m_b, data, val, first.replace(max_epochs=3), resume=True, **SILENT)
    assert res["epochs"] == 3
    for (name, a), b in zip(m_a.state_dict().items(), m_b.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert [r["epoch"] for r in _rows(tmp_path / "b")] == ["1", "2", "3"]
    assert _rows(tmp_path / "b")[:2] != []  # rows of the first run are kept


def test_time_limit_is_a_budget_per_run_across_resumes(tmp_path):
    data, val = BlobVolumes(2), BlobVolumes(1, seed=1)
    cfg = tiny(out=str(tmp_path / "run"), max_epochs=4, max_train_s=1e-6)
    res = fit(build_model(cfg), data, val, cfg, **SILENT)
    assert (res["epochs"], res["stop_reason"]) == (1, "time_limit")
    spent = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["state"]["train_s"]
    assert spent == pytest.approx(float(_rows(tmp_path / "run")[0]["epoch_s"]), rel=1e-5)
    # a rerun of the stopped run (say after a crash in evaluation) does not train again
    res = fit(build_model(cfg), data, val, cfg, resume=True, **SILENT)
    assert (res["epochs"], res["stop_reason"]) == (1, "time_limit")
    assert len(_rows(tmp_path / "run")) == 1
    # a larger budget goes on from where the run stopped
    more = cfg.replace(max_train_s=spent * 1e6)
    res = fit(build_model(more), data, val, more, resume=True, **SILENT)
    assert (res["epochs"], res["stop_reason"]) == (4, "max_epochs")


def test_plateau_halves_lr_and_early_stop(tmp_path, monkeypatch):
    losses = iter([1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95])

    def fake_validate(*args, **kwargs):
        return {"val_loss": next(losses), "val_dice_WT": 0.5, "val_dice_TC": 0.5,
                "val_dice_ET": 0.5}

    monkeypatch.setattr(epochs, "validate", fake_validate)
    cfg = tiny(out=str(tmp_path / "r"), max_epochs=8, lr_patience=2, early_stop=4, lr=1e-3)
    res = fit(build_model(cfg), BlobVolumes(1), BlobVolumes(1), cfg, **SILENT)
    rows = _rows(tmp_path / "r")
    # best at epoch 2; bad epochs 3,4 -> LR halves after the 2nd bad epoch (used from epoch 5);
    # bad epochs 5,6 -> halves again; 4 bad epochs (3..6) -> stop after epoch 6
    assert res["stop_reason"] == "early_stop" and res["epochs"] == 6 and res["best_epoch"] == 2
    assert [float(r["lr"]) for r in rows] == pytest.approx([1e-3] * 4 + [5e-4] * 2)
    assert [int(r["best"]) for r in rows] == [1, 1, 0, 0, 0, 0]


class _PoisonAfter(BlobVolumes):
    """Returns NaN images once ``clean`` items have been served."""

    def __init__(self, n, clean):
        super().__init__(n)
        self.served, self.clean = 0, clean

    def __getitem__(self, i):
        self.served += 1
        item = dict(self.items[i])
        if self.served > self.clean:
            item["image"] = torch.full_like(item["image"], math.nan)
        return item


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = tiny(out=str(tmp_path / "run"), max_epochs=3)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLoss, match=r"epoch 2, step 1 .*last\.pt"):
        fit(build_model(cfg), _PoisonAfter(2, clean=2), BlobVolumes(1), cfg, **SILENT)
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in last["model"].values())
    assert [r["epoch"] for r in _rows(run)] == ["1"]


def test_swapping_changes_nothing_but_the_stats(tmp_path):
    from swapseg.offload.policy import MemoryPlan, SwapPolicy

    data, val = BlobVolumes(2), BlobVolumes(1, seed=1)
    plain = tiny(out=str(tmp_path / "plain"), max_epochs=2)
    swapped = plain.replace(out=str(tmp_path / "swap"),
                            plan=MemoryPlan(swap=SwapPolicy(tier="host")))
    m_plain, m_swap = build_model(plain), build_model(swapped)
    fit(m_plain, data, val, plain, **SILENT)
    fit(m_swap, data, val, swapped, **SILENT)
    for (name, a), b in zip(m_plain.state_dict().items(), m_swap.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    rows = _rows(tmp_path / "swap")
    assert all(float(r["swap_swapped"]) > 0 for r in rows)
    assert all(float(r["swap_swapped"]) == 0 for r in _rows(tmp_path / "plain"))
    stats = __import__("json").loads((tmp_path / "swap" / "swap_stats.json").read_text())
    assert stats["steps"] == 4 and stats["policy"]["tier"] == "host"
    first, avg = stats["first_step"], stats["average_step"]
    # per-step figures, not the epoch's cumulative counters
    assert first["swapped"] == avg["swapped"] > 0 and first["steps"] == 1
    assert first["by_scope"] and avg["bytes_out"] == first["bytes_out"]


def test_trace_step_writes_timeline(tmp_path):
    from swapseg.offload.policy import MemoryPlan, SwapPolicy

    cfg = tiny(out=str(tmp_path / "t"), max_epochs=2, plan=MemoryPlan(swap=SwapPolicy()),
               trace_step=3)
    fit(build_model(cfg), BlobVolumes(2), BlobVolumes(1), cfg, **SILENT)
    tl = __import__("json").loads((tmp_path / "t" / "timeline.json").read_text())
    assert tl["step"] == 3 and tl["events"]
    # step 3 is the 2nd step of epoch 2: the engine's 2nd step in that epoch's context
    assert tl["engine_step"] == 2 and {e["step"] for e in tl["events"]} == {2}
    assert (tmp_path / "t" / "timeline.png").stat().st_size > 0


def test_recompute_plan_keeps_gradients(tmp_path):
    from swapseg.offload.recompute import RecomputePolicy

    data, val = BlobVolumes(2), BlobVolumes(1, seed=1)
    plain = tiny(out=str(tmp_path / "plain"), max_epochs=1, dropout=0.3)
    rec = plain.replace(out=str(tmp_path / "rec"), plan={
        "name": "test", "swap": None,
        "recompute": RecomputePolicy(scopes=("encoder.*",)).to_dict()})
    m_plain = build_model(plain)  # seeds the RNG that dropout draws from
    fit(m_plain, data, val, plain, **SILENT)
    m_rec = build_model(rec)
    fit(m_rec, data, val, rec, **SILENT)
    for (name, a), b in zip(m_plain.state_dict().items(), m_rec.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name


def test_resume_with_in_process_augmentation_is_exact(tmp_path):
    from swapseg.data.brats import BratsVolumes, find_cases
    from swapseg.data.synthetic import synthesize

    synthesize(tmp_path / "data", 3, 16, seed=2)
    cases = find_cases(tmp_path / "data").cases

    def volumes(augment):
        return BratsVolumes(cases, (16, 16, 16), cache_dir=tmp_path / "cache", augment=augment)

    straight = tiny(out=str(tmp_path / "a"), max_epochs=3, dropout=0.3)
    m_a = build_model(straight)
    fit(m_a, volumes(True), volumes(False), straight, **SILENT)
    first = straight.replace(out=str(tmp_path / "b"), max_epochs=2)
    fit(build_model(first), volumes(True), volumes(False), first, **SILENT)
    torch.manual_seed(99)
    m_b = build_model(first)
    fit(m_b, volumes(True), volumes(False), first.replace(max_epochs=3), resume=True, **SILENT)
    for (name, a), b in zip(m_a.state_dict().items(), m_b.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
