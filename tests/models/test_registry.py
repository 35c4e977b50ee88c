import sys

import pytest
from torch import nn

from swapseg.errors import InputError
from swapseg.models.registry import build_model, parse_kwargs
from swapseg.models.unet3d import Isensee3DUNet


def test_names_and_import_specs_build_modules():
    m = build_model("isensee", {"base_filters": 4, "depth": 3})
    assert isinstance(m, Isensee3DUNet) and m.divisor == 4
    lin = build_model("torch.nn:Linear", '{"in_features": 3, "out_features": 2}')
    assert isinstance(lin, nn.Linear) and tuple(lin.weight.shape) == (2, 3)


@pytest.mark.parametrize("spec, kwargs, words", [
    ("unet9000", None, "unknown model 'unet9000'"),
    ("no.such.module:Net", None, "cannot import 'no.such.module'"),
    ("torch.nn:NoSuch", None, "has no attribute 'NoSuch'"),
    ("torch.nn:Linear", '{"in_features": 3}', "model 'torch.nn:Linear' with kwargs"),
    ("torch:float32", None, "not callable"),
    ("torch:zeros", '{"size": [2]}', "returned a Tensor, not an nn.Module"),
    ("isensee", '{"depth": 1}', "model 'isensee'"),
])
def test_bad_specs_name_themselves_in_one_line(spec, kwargs, words):
    with pytest.raises(InputError) as info:
        build_model(spec, kwargs)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_kwargs_must_be_a_json_object():
    assert parse_kwargs(None) == {} and parse_kwargs('{"a": [1]}') == {"a": [1]}
    with pytest.raises(InputError, match="not valid JSON"):
        parse_kwargs("{a: 1}")
    with pytest.raises(InputError, match="must be an object"):
        parse_kwargs("[1]")


@pytest.mark.parametrize("spec", ["usernet_e20:build", "./usernet_e20.py:build",
                                  "usernet_e20.py:build", "sub/deep_e20.py:build"])
def test_a_model_from_the_users_own_file(user_folder, spec):
    m = build_model(spec, {"channels": 3})
    assert isinstance(m, nn.Sequential) and m[0].in_channels == 3


def test_a_file_spec_loads_once_under_a_private_name(user_folder):
    spec = f"{user_folder / 'usernet_e20.py'}:build"
    build_model(spec)
    build_model(spec)
    loaded = [n for n in sys.modules if "usernet_e20" in n]
    # a private name: a user's json.py must not replace the standard json module
    assert len(loaded) == 1 and loaded[0].startswith("_swapseg_model_usernet_e20_"), loaded


@pytest.mark.parametrize("spec, words", [
    ("./nosuch_e20.py:build", "model './nosuch_e20.py:build': ./nosuch_e20.py: no such file"),
    ("sub/:build", "a folder, not a file"),
    ("nosuch_e20:build", "cannot import 'nosuch_e20'"),
    ("broken_e20:build", "importing broken_e20 raised SyntaxError"),
    ("./broken_e20.py:build", "importing ./broken_e20.py raised SyntaxError"),
    ("./usernet_e20.py:nope", "has no attribute 'nope'"),
])
def test_a_bad_user_file_is_one_line(user_folder, spec, words):
    with pytest.raises(InputError) as info:
        build_model(spec)
    assert words in str(info.value) and "\n" not in str(info.value)
