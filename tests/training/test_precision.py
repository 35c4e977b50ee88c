"""Mixed precision: the dtype mapping, autocast in training and validation, swapping under
bf16/fp16 (bitwise equal to no swapping), the fp16 GradScaler in checkpoints and resume."""

import functools
import io

import pytest
import torch
from _train_helpers import BlobVolumes

from swapseg.errors import InputError
from swapseg.models.unet3d import Isensee3DUNet
from swapseg.offload import MemoryPlan, SwapPolicy, swap_activations
from swapseg.training import epochs, loop
from swapseg.training.checkpoint import load_checkpoint
from swapseg.training.config import TrainConfig, tiny
from swapseg.training.loop import build_model, fit
from swapseg.training.precision import (
    PRECISIONS,
    MixedPrecision,
    autocast,
    autocast_dtype,
    check_precision,
)
from swapseg.training.runlog import read_log

SILENT = {"progress": False, "echo": lambda s: None}


def test_precision_names_map_to_autocast_dtypes():
    assert PRECISIONS == ("32", "bf16-mixed", "16-mixed")
    assert autocast_dtype("32") is None
    assert autocast_dtype("bf16-mixed") is torch.bfloat16
    assert autocast_dtype("16-mixed") is torch.float16
    with pytest.raises(InputError, match="'bf16'"):
        check_precision("bf16")


@pytest.mark.parametrize("precision, dtype", [("32", torch.float32),
                                              ("bf16-mixed", torch.bfloat16),
                                              ("16-mixed", torch.float16)])
def test_autocast_context_casts_matmuls(precision, dtype):
    a = torch.randn(3, 5)
    with autocast(precision, "cpu"):
        assert (a @ a.T).dtype == dtype
    assert (a @ a.T).dtype == torch.float32


def test_config_validates_and_round_trips_precision():
    cfg = tiny(precision="16-mixed", compile=True)
    back = TrainConfig.from_dict(cfg.to_dict())
    assert (back.precision, back.compile) == ("16-mixed", True)
    assert TrainConfig().precision == "32" and TrainConfig().compile is False
    with pytest.raises(InputError, match="precision must be one of 32, bf16-mixed, 16-mixed"):
        tiny(precision="fp16")


def _run(tmp_path, name, precision, swap, **changes):
    cfg = tiny(out=str(tmp_path / name), max_epochs=2, precision=precision,
               plan=swap and MemoryPlan(swap=swap),
               **changes)
    model = build_model(cfg)
    res = fit(model, BlobVolumes(3), BlobVolumes(2, seed=1), cfg, **SILENT)
    return model, res


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_swap_all_is_bitwise_equal_to_no_swap_under_mixed_precision(tmp_path, precision):
    # 2 epochs x 3 steps, dropout on: the same seed must give the same bits
    m_none, r_none = _run(tmp_path, "none", precision, None, dropout=0.2)
    m_swap, r_swap = _run(tmp_path, "swap", precision, SwapPolicy(tier="host"), dropout=0.2)
    assert r_swap["global_step"] == r_none["global_step"] == 6
    assert float(r_swap["last_row"]["swap_swapped"]) > 0  # the engine did move tensors
    for (name, a), b in zip(m_none.state_dict().items(), m_swap.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    # and mixed precision is not fp32 under another name
    m_32, _ = _run(tmp_path, "fp32", "32", None, dropout=0.2)
    assert not all(torch.equal(a, b) for a, b in zip(m_32.state_dict().values(),
                                                      m_none.state_dict().values(),
                                                      strict=True))


def _saved_bytes(precision):
    torch.manual_seed(0)
    model = Isensee3DUNet(4, 3, base_filters=4, depth=3, dropout=0.0)
    x = torch.randn(1, 4, 16, 16, 16)
    with swap_activations(model, SwapPolicy(tier="host")) as stats, autocast(precision, "cpu"):
        model(x).float().square().mean().backward()
    return stats.bytes_out, stats.swapped


def test_engine_reports_the_smaller_bytes_under_bf16():
    fp32, n32 = _saved_bytes("32")
    bf16, n16 = _saved_bytes("bf16-mixed")
    assert n32 > 0 and n16 > 0
    # conv outputs are saved in bf16 (2 bytes); norm statistics and the fp32 input copies
    # autocast keeps make it more than half
    assert bf16 < 0.75 * fp32, (bf16, fp32)


def test_validation_runs_under_the_training_autocast(tmp_path, monkeypatch):
    seen = []

    def spy(model, *args, **kwargs):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return {"val_loss": 0.5, "val_dice_WT": 0.0, "val_dice_TC": 0.0, "val_dice_ET": 0.0}

    monkeypatch.setattr(epochs, "validate", spy)
    _run(tmp_path, "bf16", "bf16-mixed", None)
    assert seen == [(True, torch.bfloat16)] * 2
    seen.clear()
    _run(tmp_path, "fp32", "32", None)
    assert [enabled for enabled, _ in seen] == [False, False]


def _weights_only(obj):
    """``obj`` after a torch.save / torch.load(weights_only=True) round trip."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_fp16_scaler_state_is_checkpointed_and_loads_weights_only(tmp_path):
    _run(tmp_path, "run", "16-mixed", None)
    ck = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ck["scaler"]["scale"] > 0 and ck["scaler"]["_growth_tracker"] == 6
    assert ck["config"]["precision"] == "16-mixed"
    # what this feature adds to the checkpoint is plain data
    added = {"scaler": ck["scaler"], "state": ck["state"], "config": ck["config"]}
    assert _weights_only(added) == added
    _run(tmp_path, "fp32", "32", None)
    assert load_checkpoint(tmp_path / "fp32" / "checkpoints" / "last.pt")["scaler"] == {}


def test_fp16_resume_is_exact_including_the_scale(tmp_path, monkeypatch):
    # a scale that halves on the first steps makes the scaler state matter for the resume
    scaler = functools.partial(MixedPrecision, init_scale=2.0 ** 24)
    monkeypatch.setattr(loop, "MixedPrecision", scaler)
    data, val = BlobVolumes(3), BlobVolumes(2, seed=1)
    straight = tiny(out=str(tmp_path / "a"), max_epochs=3, precision="16-mixed", dropout=0.3)
    m_a = build_model(straight)
    fit(m_a, data, val, straight, **SILENT)
    first = straight.replace(out=str(tmp_path / "b"), max_epochs=2)
    fit(build_model(first), data, val, first, **SILENT)
    torch.manual_seed(123)
    m_b = build_model(first)
    fit(m_b, data, val, first.replace(max_epochs=3), resume=True, **SILENT)
    for (name, a), b in zip(m_a.state_dict().items(), m_b.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    ck_a = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    ck_b = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    assert ck_a["scaler"] == ck_b["scaler"]
    assert ck_a["state"]["skipped_steps"] == ck_b["state"]["skipped_steps"]


def test_inf_gradients_skip_the_step_and_are_counted_per_epoch(tmp_path, monkeypatch):
    # 2**120 times the loss overflows every fp16 gradient: each step is skipped
    monkeypatch.setattr(loop, "MixedPrecision",
                        functools.partial(MixedPrecision, init_scale=2.0 ** 120))
    cfg = tiny(out=str(tmp_path / "run"), max_epochs=2, precision="16-mixed")
    model = build_model(cfg)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    lines = []
    fit(model, BlobVolumes(3), BlobVolumes(2, seed=1), cfg, progress=False,
        echo=lines.append)
    assert [r["skipped_steps"] for r in read_log(tmp_path / "run" / "log.csv")] == ["3", "3"]
    assert "3 step(s) skipped" in lines[-1]
    for k, v in model.state_dict().items():
        assert torch.equal(v, init[k]), k  # no update was applied
    ck = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ck["state"]["skipped_steps"] == 6 and ck["scaler"]["scale"] == 2.0 ** 114


def test_no_skips_in_normal_fp16_training(tmp_path):
    _, res = _run(tmp_path, "run", "16-mixed", None)
    assert [r["skipped_steps"] for r in read_log(tmp_path / "run" / "log.csv")] == ["0", "0"]
    assert res["global_step"] == 6


@pytest.mark.parametrize("precision, dtype", [("bf16-mixed", torch.bfloat16), ("32", None)])
def test_prediction_runs_under_the_checkpoint_precision(tmp_path, monkeypatch, precision,
                                                        dtype):
    from swapseg.data.synthetic import synthesize
    from swapseg.predict import inference

    _run(tmp_path, "run", precision, None)
    synthesize(tmp_path / "cases", 1, 16, seed=2)
    seen = []
    real = inference.predict_volume

    def spy(*args, **kwargs):
        on = torch.is_autocast_enabled("cpu")
        seen.append(torch.get_autocast_dtype("cpu") if on else None)
        return real(*args, **kwargs)

    monkeypatch.setattr(inference, "predict_volume", spy)
    inference.predict_cases(tmp_path / "run" / "checkpoints" / "best.pt", tmp_path / "cases",
                            tmp_path / "pred", device="cpu", progress=False)
    assert seen == [dtype]
    assert len(list((tmp_path / "pred").glob("*.nii.gz"))) == 1
