"""Every flag of every subcommand, given a bad value: exit 2, one line naming it, no traceback.

The flags come from the parsers themselves (``build_parser``): a new flag without a row in
``ROWS`` fails ``test_every_flag_has_a_row``. A row lists bad command-line fragments for one
flag; ``SWITCH`` marks a flag that takes no value (nothing to get wrong on its own).
Placeholders: ``{missing}`` a path that does not exist, ``{empty}`` an empty folder,
``{file}`` an existing regular file, ``{under_file}`` a path below that file, ``{data}`` the
synthetic data set, ``{case}`` one case folder of it.

Format (``swapseg.cli.grammar.Parser``): a bad value is ``swapseg <cmd>: error: argument
--flag: ...`` from argparse or ``swapseg: error: ...`` from the command, one line; an
unknown option prints the subcommand's usage, then one error line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from swapseg.cli import build_parser, main

SWITCH: list[list[str]] = []
HAS_NNUNET = importlib.util.find_spec("nnunetv2") is not None


def bad(flag: str, *values: str) -> list[list[str]]:
    return [[flag, v] for v in values]


#: The valid command each row's fragment is added to (a later flag wins in argparse).
BASE = {
    "demo": ["demo", "--out", "{out}", "--quick", "--no-progress"],
    "synth": ["synth", "--out", "{out}", "--cases", "1", "--shape", "16"],
    "data check": ["data", "check", "{data}", "--no-progress"],
    "train": ["train", "--data", "{data}", "--out", "{out}", "--preset", "tiny", "--folds", "3",
              "--no-progress"],
    "predict": ["predict", "--checkpoint", "{ckpt}", "--input", "{data}", "--out", "{out}",
                "--no-progress"],
    "evaluate": ["evaluate", "--pred", "{labels}", "--truth", "{data}", "--out", "{out}",
                 "--no-progress"],
    "plan": ["plan", "--shape", "4x32x32x32", "--memory-budget", "1GiB"],
    "bench": ["bench", "--out", "{out}"],
    "experiment full-vs-patch": ["experiment", "full-vs-patch", "--data", "{data}", "--out",
                                 "{out}", "--folds", "3", "--no-progress"],
    "nnunet trainers": ["nnunet", "trainers"],
    # nnU-Net's default device is cuda; --device cpu lets this machine judge the rest
    "nnunet train": ["nnunet", "train", "501", "3d_fullres", "0", "--device", "cpu"],
    "nnunet synth": ["nnunet", "synth", "501", "--raw", "{out}"],
    "nnunet plan-experiment": ["nnunet", "plan-experiment", "501"],
    "nnunet plan": ["nnunet", "plan", "501"],
    "nnunet predict": ["nnunet", "predict", "-i", "{data}", "-o", "{out}", "-d", "501", "-c",
                       "3d_fullres", "--device", "cpu"],
}
NOT_INT = "x"
PATHS = ("{missing}", "{empty}")

ROWS: dict[str, dict[str, list[list[str]]]] = {
    "demo": {
        "--out": bad("--out", "{under_file}"), "--cases": bad("--cases", NOT_INT, "3"),
        "--shape": bad("--shape", NOT_INT, "0"), "--epochs": bad("--epochs", NOT_INT, "0"),
        "--time-limit": bad("--time-limit", "soon", "-1"), "--quick": SWITCH,
        "--seed": bad("--seed", NOT_INT), "--no-progress": SWITCH,
        "--precision": bad("--precision", "fp16"), "--compile": SWITCH,
    },
    "synth": {
        "--out": bad("--out", "{under_file}"), "--cases": bad("--cases", NOT_INT, "0"),
        "--shape": bad("--shape", "abc", "0", "4x16x16x16"), "--seed": bad("--seed", NOT_INT),
        "--json": bad("--json", "{under_file}/s.json"),
    },
    "data check": {
        "dir": [["{missing}"], ["{empty}"], ["{case}"]], "--skip-bad": SWITCH,
        "--quick": SWITCH, "--json": bad("--json", "{under_file}/c.json"),
        "--no-progress": SWITCH,
    },
    "train": {
        "--data": bad("--data", *PATHS, "{case}"), "--out": bad("--out", "{under_file}"),
        "--preset": bad("--preset", "huge"), "--mode": bad("--mode", "half"),
        "--shape": bad("--shape", "abc", "15", "4x16x16x16"),
        "--zoom": bad("--zoom", NOT_INT, "0"), "--patch": bad("--patch", NOT_INT, "0"),
        "--patches-per-volume": bad("--patches-per-volume", NOT_INT, "0"),
        "--tumor-fraction": bad("--tumor-fraction", "half", "2"),
        "--batch": bad("--batch", NOT_INT, "0"), "--epochs": bad("--epochs", NOT_INT, "0"),
        "--early-stop": bad("--early-stop", NOT_INT, "0"),
        "--lr-patience": bad("--lr-patience", NOT_INT, "-1"),
        "--time-limit": bad("--time-limit", "soon", "-5"), "--lr": bad("--lr", "fast", "0"),
        "--dropout": bad("--dropout", "some", "1"), "--loss": bad("--loss", "l2"),
        "--base-filters": bad("--base-filters", NOT_INT, "0"),
        "--depth": bad("--depth", NOT_INT, "1"), "--folds": bad("--folds", NOT_INT, "2"),
        "--fold": bad("--fold", NOT_INT, "9"), "--seed": bad("--seed", NOT_INT),
        "--workers": bad("--workers", NOT_INT, "-1"), "--device": bad("--device", "gpu"),
        "--no-augment": SWITCH, "--cache-dir": bad("--cache-dir", "{file}"),
        "--resume": [["--resume", "--overwrite"]], "--overwrite": SWITCH,
        "--no-progress": SWITCH, "--precision": bad("--precision", "fp16"),
        "--compile": SWITCH, "--swap": bad("--swap", "{missing}.json", "{file}"),
        "--swap-n-tensors": bad("--swap-n-tensors", NOT_INT) + [
            ["--swap-n-tensors", "3"]],  # without --swap all: names the flag it needs
        "--swap-include": [["--swap-include", "enc*"]],
        "--swap-exclude": [["--swap-exclude", "dec*"]],
        "--swap-min-bytes": bad("--swap-min-bytes", NOT_INT) + [["--swap-min-bytes", "8"]],
        "--swap-prefetch": bad("--swap-prefetch", NOT_INT) + [
            ["--swap", "all", "--swap-prefetch", "0"]],
        "--swap-branches": [["--swap", "auto", "--memory-budget", "1GiB", "--swap-branches"]],
        "--swap-tier": bad("--swap-tier", "tape"),
        "--swap-disk-dir": [["--swap-disk-dir", "{empty}"]],
        "--memory-budget": [["--swap", "auto", "--memory-budget", "lots"],
                            ["--swap", "all", "--memory-budget", "1GiB"]],
        "--trace-step": bad("--trace-step", NOT_INT) + [["--trace-step", "1"]],
    },
    "predict": {
        "--checkpoint": bad("--checkpoint", "{missing}", "{file}"),
        "--run": bad("--run", *PATHS), "--fold": bad("--fold", NOT_INT, "-1"),
        "--input": bad("--input", *PATHS, "{case}"), "--out": bad("--out", "{under_file}"),
        "--inference": bad("--inference", "magic"),
        "--window": bad("--window", NOT_INT, "0"), "--overlap": bad("--overlap", "lots", "1"),
        "--tta": SWITCH, "--device": bad("--device", "gpu"),
        "--convention": bad("--convention", "brats1999"), "--no-progress": SWITCH,
        "--precision": bad("--precision", "fp16"),
    },
    "evaluate": {
        "--pred": bad("--pred", *PATHS), "--truth": bad("--truth", *PATHS),
        "--out": bad("--out", "{under_file}"), "--empty": bad("--empty", "zero"),
        "--overlays": bad("--overlays", "many", "-1"),
        "--convention": bad("--convention", "brats1999"), "--no-progress": SWITCH,
        "--only-predicted": SWITCH,
    },
    "plan": {
        "--model": bad("--model", "nosuch", "nosuch.module:Net"),
        "--model-kwargs": bad("--model-kwargs", "not json", "[1, 2]"),
        "--shape": bad("--shape", "abc", "1x4x32x32x32", "4x30x32x32"),
        "--batch": bad("--batch", NOT_INT, "0"), "--profile": bad("--profile", "abacus"),
        "--memory-budget": bad("--memory-budget", "lots", "0"),
        "--precision": bad("--precision", "8"), "--margin": bad("--margin", "some", "1.5"),
        "--out": bad("--out", "{under_file}"),
        "--loss": bad("--loss", "nosuch", "nosuch.module:Loss", "builtins:int"),
        "--loss-kwargs": [["--loss-kwargs", "[]"],  # without --loss
                          ["--loss", "torch.nn:MSELoss", "--loss-kwargs", "not json"]],
        "--target": [*bad("--target", "1x3:float99", "labels"),  # labels: without --loss
                     ["--loss", "torch.nn:MSELoss", "--target", "2x4x32x32x32:float32"]],
    },
    "bench": {
        "--shape": bad("--shape", "abc", "40"), "--steps": bad("--steps", NOT_INT, "0"),
        "--warmup": bad("--warmup", NOT_INT, "-1"),
        "--memory-budget": bad("--memory-budget", "lots"), "--cap": bad("--cap", "lots"),
        "--profile": bad("--profile", "abacus"), "--device": bad("--device", "gpu"),
        "--precision": bad("--precision", "8"), "--compile": SWITCH, "--quick": SWITCH,
        "--out": bad("--out", "{under_file}"), "what": [["sideways"]],
        "--no-progress": SWITCH,
        # `bench largest` only: each fails before the first probe
        **{flag: [["largest", flag, v] for v in values] for flag, values in {
            "--methods": ("fastest", ""), "--sides": ("abc", "100"), "--range": ("a:b", "1:8"),
            "--model": ("nosuch", "nosuch.module:Net"), "--model-kwargs": ("not json",),
            "--channels": (NOT_INT, "0"), "--probe-steps": (NOT_INT, "0"),
            "--probe-timeout": ("soon", "0"), "--disk-dir": ("{under_file}",),
            "--moonshot": (NOT_INT, "100"), "--moonshot-cap": ("lots",)}.items()},
        "--resume": SWITCH,
    },
    "experiment full-vs-patch": {
        "--data": bad("--data", *PATHS, "{case}"), "--out": bad("--out", "{under_file}"),
        "--folds": bad("--folds", NOT_INT, "2"), "--run-folds": bad("--run-folds", NOT_INT, "0"),
        "--epochs": bad("--epochs", NOT_INT, "0"),
        "--early-stop": bad("--early-stop", NOT_INT, "0"),
        "--lr-patience": bad("--lr-patience", NOT_INT, "-1"),
        "--time-limit": bad("--time-limit", "soon", "-5"),
        "--shape": bad("--shape", "abc", "15"), "--zoom": bad("--zoom", NOT_INT, "0"),
        "--patch": bad("--patch", NOT_INT, "0"),
        "--patches-per-volume": bad("--patches-per-volume", NOT_INT, "0"),
        "--swap": bad("--swap", "{missing}.json"),
        "--memory-budget": bad("--memory-budget", "lots"), "--lr": bad("--lr", "fast", "0"),
        "--dropout": bad("--dropout", "some", "1"),
        "--base-filters": bad("--base-filters", NOT_INT, "0"),
        "--depth": bad("--depth", NOT_INT, "1"), "--workers": bad("--workers", NOT_INT, "-1"),
        "--device": bad("--device", "gpu"), "--seed": bad("--seed", NOT_INT),
        "--overlays": bad("--overlays", NOT_INT, "-1"), "--no-progress": SWITCH,
        "--precision": bad("--precision", "fp16"),
    },
    "nnunet trainers": {},
    "nnunet train": {  # without nnunetv2 every value past argparse stops at "not installed"
        "dataset": [["nosuch"]], "configuration": [["4d_fullres"]], "fold": [["x"]],
        "-tr": bad("-tr", "nnUNetTrainerNoSuch"), "-p": bad("-p", "NoSuchPlans"),
        "--device": bad("--device", "gpu"), "--c": SWITCH, "--npz": SWITCH,
    },
    "nnunet plan-experiment": {
        "dataset": [["nosuch"]], "-pl": bad("-pl", "NoSuchPlanner"),
        "--profile": bad("--profile", "nosuch"),
        "--max-slowdown": bad("--max-slowdown", "-1", "soon"),
        "--max-patch": bad("--max-patch", "abc", "0"),
        "-gpu_memory_target": bad("-gpu_memory_target", "x", "-1"),
        "-overwrite_plans_name": [],
    },
    "nnunet plan": {
        "dataset": [["nosuch"]], "-pl": bad("-pl", "NoSuchPlanner"),
        "--profile": bad("--profile", "nosuch"),
        "--max-slowdown": bad("--max-slowdown", "-1", "soon"),
        "--max-patch": bad("--max-patch", "abc", "0"),
        "-c": [], "--gpu-memory": bad("--gpu-memory", "16", "lots"),
        "--json": bad("--json", "{under_file}/p.json"),
    },
    "nnunet predict": {
        "-i": bad("-i", "{missing}"), "-o": bad("-o", "{under_file}"),
        "-d": bad("-d", "nosuch"), "-c": [], "-f": [], "-tr": [], "-p": [], "-chk": [],
        "-step_size": bad("-step_size", "2", "x"), "--disable_tta": SWITCH,
        "--device": bad("--device", "gpu"),
    },
    "nnunet synth": {
        "dataset_id": [["x"], ["0"]], "--cases": bad("--cases", NOT_INT, "0"),
        "--shape": bad("--shape", "abc", "40,36,32"), "--seed": bad("--seed", NOT_INT),
        "--raw": bad("--raw", "{under_file}"),
    },
}

#: Rows whose bad value argparse accepts and only nnU-Net itself can judge.
NEEDS_NNUNET = {("nnunet train", f) for f in ("dataset", "configuration", "fold", "-tr", "-p")} \
    | {("nnunet plan-experiment", "dataset"), ("nnunet plan", "dataset"),
       ("nnunet predict", "-i"), ("nnunet predict", "-d")}
#: Flags whose value is any name: a configuration, fold, trainer, plans identifier or
#: checkpoint that nnU-Net looks up only once the dataset's files are read (an empty row).
FREE_NAMES = {("nnunet plan-experiment", "-overwrite_plans_name"), ("nnunet plan", "-c"),
              *(("nnunet predict", f) for f in ("-c", "-f", "-tr", "-p", "-chk"))}
#: Positionals: their fragment replaces the base's value at this index.
POSITIONAL_AT = {("data check", "dir"): 2, ("nnunet train", "dataset"): 2,
                 ("nnunet train", "configuration"): 3, ("nnunet train", "fold"): 4,
                 ("nnunet synth", "dataset_id"): 2, ("nnunet plan-experiment", "dataset"): 2,
                 ("nnunet plan", "dataset"): 2}


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield " ".join(path), parser
        return
    for name, sub in subs[0].choices.items():
        yield from _leaves(sub, (*path, name))


def _flags_of(action: argparse.Action) -> str:
    return max(action.option_strings, key=len) if action.option_strings else action.dest


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    return [_flags_of(a) for a in parser._actions if not isinstance(a, argparse._HelpAction)]


def test_every_flag_has_a_row():
    leaves = dict(_leaves(build_parser()))
    assert set(leaves) == set(ROWS) == set(BASE)
    for cmd, parser in leaves.items():
        assert sorted(_flags(parser)) == sorted(ROWS[cmd]), cmd
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flag = _flags_of(action)
            takes_value = action.nargs != 0
            if (cmd, flag) in FREE_NAMES:
                assert ROWS[cmd][flag] == [], f"{cmd} {flag}: rows for a free name"
                continue
            assert not (takes_value and not ROWS[cmd][flag]), f"{cmd} {flag}: no bad value"


CASES = [pytest.param(cmd, flag, frag, id=f"{cmd} {' '.join(frag) or flag}",
                      marks=[pytest.mark.skipif(not HAS_NNUNET and (cmd, flag) in NEEDS_NNUNET,
                                                reason="nnunetv2 not installed")])
         for cmd, rows in ROWS.items() for flag, frags in rows.items() for frag in frags]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny synthetic data, a labels folder, a 1-epoch checkpoint: made once."""
    root = tmp_path_factory.mktemp("bad_flags")
    data, labels = root / "data", root / "labels"
    assert main(["synth", "--out", str(data), "--cases", "3", "--shape", "16"]) == 0
    labels.mkdir()
    for case in sorted(data.iterdir()):
        shutil.copy(case / f"{case.name}_seg.nii.gz", labels / f"{case.name}.nii.gz")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", "--data", str(data), "--out", str(root / "run"), "--preset",
                     "tiny", "--shape", "16", "--epochs", "1", "--folds", "3",
                     "--no-progress"]) == 0
    finally:
        torch.set_num_threads(n)
    (root / "empty").mkdir()
    (root / "file.txt").write_text("not a folder\n")
    ckpt = next((root / "run").rglob("best.pt"))
    return {"data": data, "labels": labels, "ckpt": ckpt, "root": root,
            "case": sorted(data.iterdir())[0]}


def _subs(world: dict[str, Path], out: Path) -> dict[str, Path]:
    return {"out": out, "missing": world["root"] / "missing", "empty": world["root"] / "empty",
            "file": world["root"] / "file.txt", "under_file": world["root"] / "file.txt" / "sub",
            **{k: world[k] for k in ("data", "labels", "ckpt", "case")}}


def _argv(cmd: str, flag: str, frag: list[str], world: dict[str, Path], out: Path) -> list[str]:
    subs = _subs(world, out)
    base = [a.format(**subs) for a in BASE[cmd]]
    frag = [a.format(**subs) for a in frag]
    if (cmd, flag) in POSITIONAL_AT:
        base[POSITIONAL_AT[cmd, flag]] = frag[0]
        return base
    return base + frag


def _run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("cmd, flag, frag", CASES)
def test_bad_value_is_one_line(cmd, flag, frag, world, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    if cmd in ("nnunet train", "nnunet predict"):  # a preprocessed dataset 501: values judged
        pre = tmp_path / "preprocessed"
        (pre / "Dataset501_Tiny").mkdir(parents=True)
        (pre / "Dataset501_Tiny" / "nnUNetPlans.json").write_text(
            json.dumps({"configurations": {"3d_fullres": {}}}))
        (pre / "Dataset501_Tiny" / "dataset.json").write_text("{}")
        monkeypatch.setenv("nnUNet_preprocessed", str(pre))
        monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    out = tmp_path / "out"
    argv = _argv(cmd, flag, frag, world, out)
    code, err = _run(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2, (argv, err)
    assert "Traceback" not in err
    assert len(lines) == 1, err
    line = lines[0]
    prefix = "swapseg: error: " if line.startswith("swapseg: ") else f"swapseg {cmd}: error: "
    assert line.startswith(prefix), line
    given = [a.format(**_subs(world, out)) for a in frag]
    named = [flag, *[v for v in given if v not in ("--swap", "all", "auto")]]
    assert any(n in line for n in named), f"{line!r} names none of {named}"
    assert not out.exists() or not any(out.iterdir()), f"{out} half-written"


@pytest.mark.parametrize("cmd", sorted(BASE))
def test_unknown_option_shows_the_subcommands_usage(cmd, world, tmp_path, capsys):
    argv = _argv(cmd, "", [], world, tmp_path / "out") + ["--no-such-flag"]
    code, err = _run(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err
    assert lines[0].startswith(f"usage: swapseg {cmd} ")
    assert lines[-1] == f"swapseg {cmd}: error: unrecognized arguments: --no-such-flag"


@pytest.mark.parametrize("argv, target", [
    (["demo", "--out", "{out}", "--quick"], "swapseg.experiments.demo.run_demo"),
    (["experiment", "full-vs-patch", "--data", "{data}", "--out", "{out}", "--folds", "3"],
     "swapseg.experiments.full_vs_patch.run_full_vs_patch"),
])
def test_non_finite_loss_is_one_line_everywhere(argv, target, world, tmp_path, capsys,
                                                monkeypatch):
    from swapseg.training.loop import NonFiniteLoss

    def diverge(*args, **kwargs):
        raise NonFiniteLoss("loss is nan at epoch 0 step 1: lower --lr")

    monkeypatch.setattr(target, diverge)
    code, err = _run([a.format(**_subs(world, tmp_path / "out")) for a in argv], capsys)
    assert (code, err) == (2, "swapseg: error: loss is nan at epoch 0 step 1: lower --lr\n")


def test_predict_precision_overrides_the_checkpoints(world, tmp_path, capsys):
    import json

    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(world["ckpt"]), "--input", str(world["data"]),
                 "--out", str(out), "--precision", "bf16-mixed", "--no-progress"]) == 0
    assert json.loads((out / "predictions.json").read_text())["precision"] == "bf16-mixed"


def test_experiment_interrupted_says_how_to_continue(world, tmp_path, capsys, monkeypatch):
    import signal
    import sys

    from swapseg.training.interrupt import Interrupted

    def interrupted(*args, **kwargs):
        raise Interrupted(signal.SIGINT, Path("exp/full/fold_0/last.pt"))

    monkeypatch.setattr("swapseg.experiments.full_vs_patch.run_full_vs_patch", interrupted)
    argv = ["experiment", "full-vs-patch", "--data", str(world["data"]), "--out",
            str(tmp_path / "exp"), "--folds", "3"]
    monkeypatch.setattr(sys, "argv", ["swapseg", *argv])
    code, err = _run(argv, capsys)
    assert code == 128 + signal.SIGINT
    assert err.endswith("; continue with the same command: swapseg experiment full-vs-patch "
                        f"--data {world['data']} --out {tmp_path / 'exp'} --folds 3\n")
