"""The flags of train and experiment are made from ``TrainConfig``'s fields: one name,
one help text, one default, one "applies on resume" per field."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from swapseg.cli import build_parser, config_flags
from swapseg.cli.experiment_cmd import CONFIG_FIELDS as EXPERIMENT_FIELDS
from swapseg.cli.train_cmd import CONFIG_FIELDS as TRAIN_FIELDS
from swapseg.cli.train_cmd import RESUME_FLAGS
from swapseg.training.config import TrainConfig


def _actions(*command: str) -> dict[str, argparse.Action]:
    parser = build_parser()
    for word in command:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    return {a.dest: a for a in parser._actions}


def test_help_comes_from_the_field_docstring_and_the_default_from_the_field():
    docs = config_flags.field_docs()
    assert docs["lr"] == "Adam learning rate."
    actions = _actions("train")
    assert actions["lr"].help == "Adam learning rate (default 0.0005)"
    assert actions["max_epochs"].option_strings == ["--epochs"]
    assert actions["mode"].choices == ("full", "patch")  # the Literal's values
    assert actions["loss"].choices == ("dice", "dice_bce")
    assert actions["augment"].option_strings == ["--no-augment"]
    assert actions["augment"].help.startswith("no random flips")


@pytest.mark.parametrize("command, fields", [(("train",), TRAIN_FIELDS),
                                             (("experiment", "full-vs-patch"),
                                              EXPERIMENT_FIELDS)])
def test_every_flag_of_a_field_is_the_fields(command, fields):
    flags = config_flags.flags()
    actions = _actions(*command)
    for name in fields:
        assert actions[name].option_strings == [flags[name]], name
        assert actions[name].default is None  # the config's default, not a second one


def test_resume_flags_are_the_fields_marked_so():
    marked = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("resume")}
    assert set(RESUME_FLAGS) == marked == {"data", "max_epochs", "max_train_s", "device"}


def test_same_flag_same_value_in_train_and_experiment(tmp_path):
    from swapseg.cli.train_cmd import config_from_args

    argv = ["--epochs", "7", "--lr", "0.01", "--shape", "32", "--time-limit", "60"]
    train = config_from_args(build_parser().parse_args(
        ["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), *argv]))
    exp = build_parser().parse_args(["experiment", "full-vs-patch", "--data", str(tmp_path),
                                     "--out", str(tmp_path / "e"), *argv])
    changes = config_flags.config_changes(exp, EXPERIMENT_FIELDS)
    assert {k: getattr(train, k) for k in changes} == changes
