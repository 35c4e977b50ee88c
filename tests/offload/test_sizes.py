"""The one size grammar (swapseg.offload.sizes): a unit is required in text, and sizes are shown
in the binary unit that reads best."""

from __future__ import annotations

import pytest

from swapseg.errors import InputError
from swapseg.offload.sizes import format_bytes, parse_bytes


@pytest.mark.parametrize("text, value", [("16GiB", 16 * 2**30), ("1e9B", 10**9),
                                         ("1024 b", 1024), (4096, 4096)])
def test_a_unit_or_a_python_int(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text, what", [("16", "--memory-budget"),
                                        ("6", "SWAPSEG_MEMORY_BUDGET"), (" 0.5 ", None)])
def test_a_bare_number_is_an_error_that_suggests_gib(text, what):
    with pytest.raises(InputError) as info:
        parse_bytes(text, what)
    msg, n = str(info.value), text.strip()
    assert f"write {n}GiB" in msg and f"{n}B for bytes" in msg and "\n" not in msg
    assert msg.startswith(f"{what}: ") if what else msg.startswith("memory size")


def test_a_bool_is_not_a_size():
    with pytest.raises(InputError, match="not a memory size"):
        parse_bytes(True)  # type: ignore[arg-type]


@pytest.mark.parametrize("n, text", [(12, "12 B"), (3 * 2**10, "3.00 KiB"),
                                     (10 * 10**6, "9.54 MiB"), (2**30 - 1, "1024.00 MiB"),
                                     (16 * 2**30, "16.00 GiB"), (2**41, "2.00 TiB")])
def test_format_bytes_never_says_zero_gib(n, text):
    assert format_bytes(n) == text


def test_a_large_bare_number_suggests_bytes():
    with pytest.raises(InputError, match=r"write 33240115B for bytes, or a unit, e\.g\. 31\.70MiB"):
        parse_bytes("33240115", "--memory-budget")
