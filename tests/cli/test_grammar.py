import argparse

import pytest
import torch

from swapseg.cli import main
from swapseg.cli.grammar import (
    Volume,
    autocast_dtype,
    byte_size,
    parse_bytes,
    parse_shape,
    spatial_shape,
    volume_shape,
)
from swapseg.errors import InputError


@pytest.mark.parametrize("text, value", [
    ("16GiB", 16 * 2**30), ("16G", 16 * 10**9), ("16gb", 16 * 10**9), ("12.5GB", 12_500_000_000),
    ("1e9B", 10**9), ("2 kib", 2048), ("1024B", 1024), ("0.5MiB", 2**19), ("1.5e3K", 1_500_000),
])
def test_byte_sizes(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["lots", "16 GiBs", "-1GiB", "0", "0.1", "1e999", "", "GiB"])
def test_bad_byte_sizes_are_one_line(text):
    with pytest.raises(InputError, match="memory size") as info:
        parse_bytes(text)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("cmd", [["plan", "--shape", "4x16x16x16"],
                                 ["bench", "methods", "--shape", "4x16x16x16"]])
def test_a_memory_budget_without_a_unit_suggests_gib(cmd, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main([*cmd, "--memory-budget", "16", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.splitlines()) == 1, err
    assert "--memory-budget" in err and "write 16GiB" in err
    assert not (tmp_path / "o").exists()


def test_train_memory_budget_without_a_unit_suggests_gib(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "o"), "--swap", "auto",
                 "--memory-budget", "16"]) == 2
    err = capsys.readouterr().err
    assert "--memory-budget: memory size '16' has no unit: write 16GiB" in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_a_budget_below_one_gib_is_shown_in_mib(capsys):
    assert main(["plan", "--shape", "4x64x64x64", "--profile", "p100-nvlink",
                 "--memory-budget", "10MB"]) == 2
    err = capsys.readouterr().err
    assert "no plan fits 9.54 MiB (usable 8.58 MiB" in err and "0.00 GiB" not in err, err


@pytest.mark.parametrize("text, vol", [
    ("64", Volume(None, (64, 64, 64))),
    ("96x128x112", Volume(None, (96, 128, 112))),
    ("4x192x192x192", Volume(4, (192, 192, 192))),
    (" 1X8X9X10 ", Volume(1, (8, 9, 10))),
])
def test_shapes(text, vol):
    assert parse_shape(text) == vol


def test_input_shape_adds_batch_and_fills_channels():
    assert parse_shape("4x8x9x10").input_shape(batch=2) == (2, 4, 8, 9, 10)
    assert parse_shape("16").input_shape(batch=1, channels=3) == (1, 3, 16, 16, 16)
    with pytest.raises(InputError, match="channel"):
        parse_shape("16").input_shape()


@pytest.mark.parametrize("text", ["1x4x64x64x64", "0x64x64x64", "axb", "64x64", "", "6x"])
def test_bad_shapes(text):
    with pytest.raises(InputError, match="shape") as info:
        parse_shape(text)
    assert "\n" not in str(info.value)
    if text.count("x") == 4:
        assert "--batch" in str(info.value)


def test_spatial_shape_refuses_channels():
    assert spatial_shape("24x28x20") == (24, 28, 20)
    with pytest.raises(argparse.ArgumentTypeError, match="N or DxHxW"):
        spatial_shape("4x24x28x20")


def test_argparse_types_print_usage_and_exit_2(capsys):
    p = argparse.ArgumentParser(prog="swapseg x")
    p.add_argument("--memory-budget", type=byte_size)
    p.add_argument("--shape", type=volume_shape)
    assert p.parse_args(["--memory-budget", "1GiB"]).memory_budget == 2**30
    with pytest.raises(SystemExit) as info:
        p.parse_args(["--memory-budget", "lots"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: swapseg x") and "not a memory size: 'lots'" in err
    assert "Traceback" not in err


def test_precision_names_map_to_autocast_dtypes():
    assert autocast_dtype("32") is None
    assert autocast_dtype("bf16-mixed") is torch.bfloat16
    assert autocast_dtype("16-mixed") is torch.float16
    with pytest.raises(InputError, match="precision must be one of .*'fp8'"):
        autocast_dtype("fp8")


def test_target_grammar():
    from swapseg.cli.grammar import parse_target

    assert parse_target("labels").describe((2, 4, 8, 9, 10)) == ((2, 1, 8, 9, 10), torch.int64)
    assert parse_target("labels:uint8").dtype is torch.uint8
    t = parse_target("Like-Output").describe((1, 4, 8, 8, 8))
    assert callable(t) and t(torch.empty(1, 3, 8, 8, 8)).dtype is torch.float32
    assert parse_target("like-output:bfloat16").describe((1, 4, 8, 8, 8))(
        torch.empty(1, 3, 8, 8, 8)).dtype is torch.bfloat16
    assert parse_target("1x1x8x9x10:int64").describe((1, 4, 8, 9, 10)) == (
        (1, 1, 8, 9, 10), torch.int64)
    assert parse_target("2x8x9x10:bool").describe((2, 4, 8, 9, 10)) == (
        (2, 8, 9, 10), torch.bool)
    for bad, words in [("1x3:float99", "unknown dtype 'float99'"), ("1x1x8x8x8", "expected"),
                       ("x:int64", "expected"), ("1:int64", "batch and at least")]:
        with pytest.raises(InputError, match=words):
            parse_target(bad)
    with pytest.raises(InputError, match="--target 2x1x8x8x8:int64: batch and spatial"):
        parse_target("2x1x8x8x8:int64").describe((1, 4, 8, 8, 8))
