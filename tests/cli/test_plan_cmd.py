import json

import pytest

from swapseg.cli import main
from swapseg.offload.policy import MemoryPlan


def test_plan_writes_json_and_timeline(tmp_path, capsys):
    out = tmp_path / "p"
    rc = main(["plan", "--model", "isensee", "--shape", "4x64x64x64", "--profile",
               "p100-nvlink", "--memory-budget", "0.4GiB", "--out", str(out)])
    assert rc == 0
    d = json.loads((out / "plan_search.json").read_text())
    assert (out / "timeline.png").stat().st_size > 10_000
    assert (out / "pareto.png").stat().st_size > 10_000 and not (out / "plan.json").exists()
    rows = {c["name"]: c for c in d["candidates"]}
    front = d["front"]
    assert front and all(f["name"] in rows for f in front)
    assert [f["peak_bytes"] for f in front] == sorted(f["peak_bytes"] for f in front)
    assert any(f["name"] == d["chosen"]["name"] for f in front)  # the fastest that fits
    assert d["chosen"]["fits"] and d["chosen"]["peak_bytes"] <= 0.4 * 2**30 * 0.9
    names = {c["name"] for c in d["candidates"]}
    assert {f"paper-config-{k}" for k in range(1, 5)} <= names
    for c in d["candidates"]:
        assert {"name", "swapped_tensors", "swapped_bytes", "recomputed_tensors",
                "peak_bytes", "step_s", "fits"} <= set(c)
    plan = MemoryPlan.from_json((out / "memory_plan.json").read_text())
    assert plan.name == d["chosen"]["name"] and plan.to_dict() == d["memory_plan"]
    assert plan.model_class == "swapseg.models.unet3d:Isensee3DUNet"
    assert plan.swap is None or plan.swap.tier == "cuda"  # concrete for the profile's GPU
    text = capsys.readouterr().out
    assert "paper-config-4" in text and f"chosen: {d['chosen']['name']}" in text


def test_plan_any_model_by_import_spec(tmp_path):
    pytest.importorskip("monai")
    out = tmp_path / "seg"
    kwargs = '{"spatial_dims": 3, "in_channels": 2, "out_channels": 2, "init_filters": 8}'
    args = ["plan", "--model", "monai.networks.nets:SegResNet", "--model-kwargs", kwargs,
            "--shape", "2x32x32x32", "--profile", "a100-pcie4"]
    assert main([*args, "--memory-budget", "1GiB", "--out", str(out)]) == 0
    d = json.loads((out / "plan_search.json").read_text())
    keep = d["candidates"][0]
    assert keep["name"] == "keep-all" and d["chosen"]["name"] == "keep-all"
    assert not any(c["name"].startswith("paper-") for c in d["candidates"])
    # a budget below keep-all: something is swapped or recomputed, and it fits
    low = min(c["peak_bytes"] for c in d["candidates"])
    budget = int((low + keep["peak_bytes"]) / 2 / 0.9)
    out2 = tmp_path / "seg2"
    assert main([*args, "--memory-budget", f"{budget}B", "--out", str(out2)]) == 0
    d2 = json.loads((out2 / "plan_search.json").read_text())
    assert d2["chosen"]["name"] != "keep-all"
    assert d2["chosen"]["peak_bytes"] <= budget * 0.9


def test_plan_bf16_predicts_a_smaller_keep_all_peak(tmp_path):
    peaks = {}
    for prec in ("32", "bf16-mixed"):
        out = tmp_path / prec
        assert main(["plan", "--shape", "4x64x64x64", "--memory-budget", "16GiB",
                     "--precision", prec, "--out", str(out)]) == 0
        d = json.loads((out / "plan_search.json").read_text())
        assert d["command"]["precision"] == prec
        peaks[prec] = d["candidates"][0]["peak_bytes"]
    assert peaks["bf16-mixed"] < 0.75 * peaks["32"]


@pytest.mark.parametrize("extra, words", [
    (["--memory-budget", "10MB"], "missing"),
    (["--model", "nosuch", "--memory-budget", "1GiB"], "unknown model 'nosuch'"),
    (["--model", "nosuch.module:Net", "--memory-budget", "1GiB"], "cannot import"),
    (["--model", "torch.nn:NoSuchNet", "--memory-budget", "1GiB"], "no attribute"),
    (["--model-kwargs", "{bad", "--memory-budget", "1GiB"], "not valid JSON"),
    (["--model-kwargs", '{"nosuch": 1}', "--memory-budget", "1GiB"], "nosuch"),
    (["--profile", "tpu", "--memory-budget", "1GiB"], "unknown device profile 'tpu'"),
    (["--margin", "1.5", "--memory-budget", "1GiB"], "margin"),
])
def test_plan_bad_input_exit_2_nothing_written(tmp_path, capsys, extra, words):
    out = tmp_path / "p"
    assert main(["plan", "--shape", "4x64x64x64", *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("extra", [
    ["--shape", "1x4x64x64x64", "--memory-budget", "1GiB"],  # batch is --batch
    ["--shape", "4x64x64x64", "--memory-budget", "lots"],
    ["--shape", "4x64x64x64", "--memory-budget", "1GiB", "--precision", "8"],
])
def test_plan_bad_flags_are_argparse_errors(tmp_path, capsys, extra):
    with pytest.raises(SystemExit) as info:
        main(["plan", *extra, "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert info.value.code == 2
    # a bad value: one line naming the flag (grammar.Parser), no usage
    assert err.startswith("swapseg plan: error: argument --") and "Traceback" not in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "p").exists()


def test_plan_shape_not_divisible_names_it(tmp_path, capsys):
    assert main(["plan", "--shape", "4x60x64x64", "--memory-budget", "1GiB"]) == 2
    assert "multiples of 16" in capsys.readouterr().err


BASIC_UNET = ["--model", "monai.networks.nets:BasicUNet", "--model-kwargs",
              '{"spatial_dims": 3, "in_channels": 1, "out_channels": 3, '
              '"features": [4, 4, 8, 8, 16, 4], "norm": ["group", {"num_groups": 1}]}',
              "--shape", "1x17x19x21", "--memory-budget", "100MiB"]
DICE_CE = ["--loss", "monai.losses:DiceCELoss",
           "--loss-kwargs", '{"to_onehot_y": true, "softmax": true}']


def test_plan_with_the_users_monai_loss_and_target(tmp_path, capsys):
    pytest.importorskip("monai")
    out = tmp_path / "dicece"
    assert main(["plan", *BASIC_UNET, *DICE_CE, "--target", "1x1x17x19x21:int64",
                 "--out", str(out)]) == 0
    d = json.loads((out / "plan_search.json").read_text())
    assert d["command"]["loss"] == "monai.losses:DiceCELoss"
    assert d["command"]["loss_kwargs"] == {"to_onehot_y": True, "softmax": True}
    assert d["command"]["target"] == "1x1x17x19x21:int64"
    assert d["chosen"]["fits"] and (out / "memory_plan.json").exists()
    # the loss was traced (through its measured stand-in): it saves more than the
    # default mean of squares, which keeps the output alone
    plain = tmp_path / "plain"
    assert main(["plan", *BASIC_UNET, "--out", str(plain)]) == 0
    d0 = json.loads((plain / "plan_search.json").read_text())
    assert "loss" not in d0["command"]
    assert d["trace"]["saved_bytes"] > d0["trace"]["saved_bytes"]


def test_plan_labels_target_is_the_explicit_shape(tmp_path):
    pytest.importorskip("monai")
    saved = {}
    for target in ("labels", "1x1x17x19x21:int64"):
        out = tmp_path / target.replace(":", "_")
        assert main(["plan", *BASIC_UNET, *DICE_CE, "--target", target,
                     "--out", str(out)]) == 0
        saved[target] = json.loads((out / "plan_search.json").read_text())["trace"]
    assert saved["labels"]["saved_bytes"] == saved["1x1x17x19x21:int64"]["saved_bytes"]


def test_plan_torch_loss_with_like_output_target(tmp_path):
    out = tmp_path / "mse"
    assert main(["plan", "--shape", "4x32x32x32", "--memory-budget", "1GiB",
                 "--loss", "torch.nn:MSELoss", "--target", "like-output",
                 "--out", str(out)]) == 0
    d = json.loads((out / "plan_search.json").read_text())
    assert d["command"]["loss"] == "torch.nn:MSELoss" and d["command"]["target"] == "like-output"


@pytest.mark.parametrize("extra, words", [
    (["--target", "labels"], "--target needs --loss"),
    (["--loss-kwargs", "{}"], "--loss-kwargs needs --loss"),
    (["--loss", "nosuch.module:Loss"], "loss 'nosuch.module:Loss': cannot import"),
    (["--loss", "torch.nn:NoSuchLoss"], "loss 'torch.nn:NoSuchLoss': 'torch.nn' has no"),
    (["--loss", "nosuch"], "unknown loss 'nosuch'"),
    (["--loss", "torch.nn:MSELoss", "--loss-kwargs", "{bad"], "loss kwargs '{bad'"),
    (["--loss", "torch.nn:MSELoss", "--loss-kwargs", '{"nosuch": 1}'],
     "loss 'torch.nn:MSELoss' with kwargs"),
    (["--loss", "builtins:int"], "loss 'builtins:int' built a int"),
    (["--loss", "torch.nn:MSELoss", "--target", "2x3x32x32x32:float32"],
     "--target 2x3x32x32x32:float32: batch and spatial sides"),
    (["--loss", "torch.nn:MSELoss", "--target", "1x32x32:float32"],
     "--target 1x32x32:float32: 3 sides"),
    (["--loss", "torch.nn:MSELoss"], "the loss takes a target: give --target"),
])
def test_plan_bad_loss_or_target_exit_2_nothing_written(tmp_path, capsys, extra, words):
    out = tmp_path / "p"
    assert main(["plan", "--shape", "4x32x32x32", "--memory-budget", "1GiB", *extra,
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("target, words", [
    ("1x3:float99", "target '1x3:float99': unknown dtype 'float99'"),
    ("1x1x32x32x32", "target '1x1x32x32x32': expected like-output"),
    ("1xax32:int64", "target '1xax32:int64': expected"),
    ("0x1x32x32x32:int64", "positive"),
    ("onehot", "target 'onehot': expected"),
])
def test_plan_bad_target_is_an_argparse_error(tmp_path, capsys, target, words):
    with pytest.raises(SystemExit) as info:
        main(["plan", "--shape", "4x32x32x32", "--memory-budget", "1GiB",
              "--loss", "torch.nn:MSELoss", "--target", target, "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.startswith("swapseg plan: error: argument --target: ") and words in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "p").exists()
