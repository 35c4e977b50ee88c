"""Every example in every ``--help`` epilog runs as written on ``swapseg synth`` output.

The examples are read from the parsers' epilogs (a new example is tested without a new
row). Each runs in a scratch working directory, so the outputs it names (``runs/tiny``,
``pred``, ``eval``) are written as written. Paths aside: the value of each input flag
(``--data``, ``--input``, ``--truth``, ``--pred``, ``--checkpoint``, ``--run``, the folder
of ``data check``) is replaced by the matching thing made here once per module from
``swapseg synth`` (5 cases of its default 64^3), a 1-epoch ``--preset tiny`` run, or its
labels (renumbered 1/2/3 for the ``--convention brats2023`` example).

Run fully (cheap on a CPU): synth, data check, predict, evaluate, nnunet trainers and
synth, plan at no more than 64^3 voxels, and train with ``--preset tiny``. Every other
example (the 192^3 protocol, demo, bench, experiment, resumes, nnU-Net training) is run to
argument validation: it parses, and for train, ``config_from_args`` builds its config.
"""

from __future__ import annotations

import argparse
import math
import shlex
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from swapseg.cli import build_parser, main
from swapseg.cli.grammar import parse_shape

INPUTS = {"--data": "data", "--input": "data", "--truth": "data", "--pred": "labels",
          "--checkpoint": "ckpt", "--run": "run"}


def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def _examples(epilog: str) -> list[str]:
    """The ``swapseg ...`` commands of an epilog, continuation lines joined."""
    found, cur = [], None
    for line in epilog.splitlines():
        if cur is None and line.strip().startswith("swapseg "):
            cur = line.strip()
        elif cur is not None:
            cur += "\n" + line
        if cur is None:
            continue
        text = cur.replace("\\\n", " ")
        try:
            shlex.split(text, comments=True)
        except ValueError:  # a quote still open: the next line belongs to it
            continue
        if not cur.endswith("\\"):
            found.append(text)
            cur = None
    return found


EXAMPLES = sorted({ex for p in _parsers(build_parser()) for ex in _examples(p.epilog or "")})


def test_examples_are_found():
    assert len(EXAMPLES) >= 30
    commands = {shlex.split(e, comments=True)[1] for e in EXAMPLES}
    assert commands >= {"demo", "synth", "data", "train", "predict", "evaluate", "plan",
                        "bench", "experiment", "nnunet"}


def _runs_fully(argv: list[str]) -> bool:
    cmd = argv[0]
    if cmd in ("synth", "data", "predict", "evaluate"):
        return True
    if cmd == "nnunet":
        return argv[1] in ("trainers", "synth")
    if cmd == "plan":
        vol = parse_shape(argv[argv.index("--shape") + 1])
        return math.prod(vol.spatial) <= 64**3
    if cmd == "train":
        return "--preset" in argv and argv[argv.index("--preset") + 1] == "tiny"
    return False


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("help_examples")
    data, labels = root / "data", root / "labels"
    assert main(["synth", "--out", str(data), "--cases", "5"]) == 0  # its default 64^3
    labels.mkdir()
    (labels23 := root / "labels23").mkdir()
    for case in sorted(data.iterdir()):
        seg = case / f"{case.name}_seg.nii.gz"
        shutil.copy(seg, labels / f"{case.name}.nii.gz")
        img = nib.load(seg)
        lab = np.asarray(img.dataobj).astype(np.uint8)
        lab[lab == 4] = 3  # BraTS 2023 numbers enhancing tumor 3
        nib.save(nib.Nifti1Image(lab, img.affine), labels23 / f"{case.name}.nii.gz")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", "--data", str(data), "--out", str(root / "run"), "--preset",
                     "tiny", "--zoom", "4", "--epochs", "1", "--folds", "3", "--fold", "all",
                     "--no-progress"]) == 0
    finally:
        torch.set_num_threads(n)
    ckpt = next((root / "run").rglob("best.pt"))
    return {"data": data, "labels": labels, "labels23": labels23, "run": root / "run",
            "ckpt": ckpt}


def _argv(example: str, made: dict[str, Path]) -> list[str]:
    argv = shlex.split(example, comments=True)[1:]
    brats2023 = "brats2023" in argv  # --convention brats2023: labels numbered 1, 2, 3
    for i, arg in enumerate(argv[:-1]):
        if arg in INPUTS:
            argv[i + 1] = str(made["labels23" if brats2023 and arg in ("--pred", "--truth")
                                    else INPUTS[arg]])
    if argv[:2] == ["data", "check"]:
        argv[2] = str(made["data"])
    return argv


@pytest.mark.parametrize("example", EXAMPLES)
def test_help_example_runs_as_written(example, made, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "nnUNet_raw"))
    argv = _argv(example, made)
    if not _runs_fully(argv):
        args = build_parser().parse_args(argv)  # a bad example: SystemExit 2 here
        if argv[0] == "train" and not args.resume:
            from swapseg.cli.train_cmd import config_from_args

            config_from_args(args)
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(argv)
    finally:
        torch.set_num_threads(n)
    assert code == 0, capsys.readouterr().err


def test_docs_presets_table_is_the_presets():
    from swapseg.cli.train_cmd import preset_flags

    docs = (Path(__file__).resolve().parents[2] / "docs" / "training.md").read_text()
    for name, flags in preset_flags().items():
        cell = flags if flags.startswith("(") else f"`{flags}`"
        assert f"| `{name}` | {cell} |" in docs, name
    assert "presets, as the flags each one sets" in build_parser()._subparsers._group_actions[
        0].choices["train"].epilog
