from dataclasses import dataclass

import pytest

from swapseg.errors import InputError
from swapseg.offload.record import check_fields, json_object


@dataclass
class _Record:
    a: int = 1
    b: str = ""


def test_check_fields_names_every_unknown_key_sorted() -> None:
    check_fields(_Record, {"a": 2}, "record")  # known keys pass
    with pytest.raises(InputError, match=r"^unknown record field\(s\): c, z$"):
        check_fields(_Record, {"z": 0, "a": 1, "c": 0}, "record")


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", r"^my plan is not valid JSON: "),
    ("[1, 2]", r"^my plan JSON must be an object$"),
])
def test_json_object_rejects_bad_text_in_one_line(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message) as info:
        json_object(text, "my plan")
    assert "\n" not in str(info.value)


def test_json_object_returns_the_object() -> None:
    assert json_object('{"a": 3}', "x") == {"a": 3}
