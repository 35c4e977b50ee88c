"""``--model`` from the user's own file, as the CLI meets it: from the current folder
without PYTHONPATH, or by path; a bad one is one line, exit 2."""

from __future__ import annotations

import json
import sys

import pytest

from swapseg.cli import main

USER_NET = '''
import torch.nn as nn


def build(channels=2):
    return nn.Sequential(nn.Conv3d(channels, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 2, 1))
'''
PLAN = ["plan", "--shape", "2x8x8x8", "--profile", "p100-nvlink", "--memory-budget", "1GiB"]


@pytest.fixture
def here(tmp_path, monkeypatch):
    (tmp_path / "mynet_e20cli.py").write_text(USER_NET)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "deepnet_e20cli.py").write_text(USER_NET)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if "e20cli" in name:
            del sys.modules[name]


@pytest.mark.parametrize("spec", ["mynet_e20cli:build", "./mynet_e20cli.py:build",
                                  "models/deepnet_e20cli.py:build"])
def test_plan_with_the_users_own_model(here, spec, capsys):
    assert main([*PLAN, "--model", spec, "--out", "p"]) == 0
    assert json.loads((here / "p" / "plan.json").read_text())["chosen"]["fits"]
    assert "chosen:" in capsys.readouterr().out


@pytest.mark.parametrize("spec, words", [
    ("./nosuch.py:build", "./nosuch.py: no such file"),
    ("mynet_e20cli:nope", "has no attribute 'nope'"),
    ("nosuch_e20cli:build", "cannot import 'nosuch_e20cli'"),
])
def test_a_bad_model_file_is_one_line_exit_2(here, spec, words, capsys):
    assert main([*PLAN, "--model", spec, "--out", "p"]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1, err
    assert not (here / "p").exists()
