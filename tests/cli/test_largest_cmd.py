"""`swapseg bench largest`: bad flags are one-line errors; the host-tier warning."""

from __future__ import annotations

import pytest

from swapseg.cli import main
from swapseg.cli.largest_cmd import parse_sides
from swapseg.cli.train_cmd import host_tier_warning
from swapseg.errors import InputError
from swapseg.offload.policy import SwapPolicy


@pytest.mark.parametrize("flags", [["--methods", "none,bogus"], ["--sides", "100"],
                                   ["--sides", "a,b"]])
def test_bad_largest_flags_exit_2(flags, tmp_path, capsys):
    rc = main(["bench", "largest", "--cap", "1GiB", "--out", str(tmp_path / "o"), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("swapseg: error:")
    assert not (tmp_path / "o").exists()


def test_parse_sides():
    assert parse_sides(None, "30:70", 16) == [32, 48, 64]
    assert parse_sides("144,128,128", "", 16) == [128, 144]
    with pytest.raises(InputError):
        parse_sides(None, "1:10", 16)


def test_host_tier_on_a_cpu_warns_in_one_line():
    w = host_tier_warning(SwapPolicy(tier="host"), "cpu")
    assert w is not None and "\n" not in w and "saves no memory" in w
    assert host_tier_warning(SwapPolicy(tier="disk"), "cpu") is None
    assert host_tier_warning(None, "cpu") is None
    assert host_tier_warning(SwapPolicy(tier="host", n_tensors=0), "cpu") is None
