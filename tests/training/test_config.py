import json

import pytest

from swapseg.errors import InputError
from swapseg.offload.policy import SwapPolicy
from swapseg.training.config import PRESETS, TrainConfig, brats_full, brats_patch, demo, tiny


def test_protocol_defaults():
    c = TrainConfig()
    assert (c.lr, c.lr_factor, c.lr_patience, c.early_stop) == (5e-4, 0.5, 10, 50)
    assert (c.folds, c.loss, c.dice_eps, c.mode, c.batch) == (5, "dice", 1e-5, "full", 1)
    assert brats_patch().batch == 2 and brats_patch().patch == 128
    assert brats_full().shape == (192, 192, 192) and brats_full().batch == 1


def test_batch_follows_mode_unless_given():
    assert TrainConfig().replace(mode="patch", patch=64).batch == 2
    assert TrainConfig(mode="patch", patch=64, batch_size=3).batch == 3


def test_json_round_trip_with_policy():
    c = tiny(swap=SwapPolicy(tier="host", exclude=("decoder.*",)), trace_step=3)
    d = json.loads(json.dumps(c.to_dict()))
    assert d["swap"]["exclude"] == ["decoder.*"] and d["batch_size"] == 1
    back = TrainConfig.from_dict(d)
    assert back == c.replace(batch_size=1)
    assert isinstance(back.swap, SwapPolicy) and back.shape == (16, 16, 16)


@pytest.mark.parametrize("changes, words", [
    ({"mode": "slices"}, "mode"),
    ({"shape": (16, 16, 20)}, "shape"),
    ({"depth": 3, "shape": (10, 12, 12)}, "multiples of 4"),
    ({"mode": "patch", "patch": 40}, "patch 40"),
    ({"fold": 5}, "fold"),
    ({"lr": 0.0}, "lr"),
    ({"loss": "focal"}, "loss"),
    ({"lr_factor": 1.0}, "lr_factor"),
    ({"device": "tpu"}, "device"),
    ({"folds": 2}, "folds"),
])
def test_invalid_values_name_the_value(changes, words):
    with pytest.raises(InputError, match=words):
        TrainConfig(**changes)


def test_unknown_field_from_json():
    with pytest.raises(InputError, match="learning_rate"):
        TrainConfig.from_dict({"learning_rate": 1e-3})


def test_presets_are_valid_and_distinct():
    made = {name: f() for name, f in PRESETS.items()}
    assert made["demo"].swap is not None and made["demo"].mode == "full"
    assert made["tiny"].max_epochs < made["brats_full"].max_epochs
    assert demo(max_epochs=3).max_epochs == 3


def test_demo_config_time_limit(tmp_path):
    from swapseg.training.demo import demo_config

    assert demo_config(tmp_path).max_train_s == demo().max_train_s == 420.0
    assert demo_config(tmp_path, time_limit=0).max_train_s is None
    assert demo_config(tmp_path, time_limit=60).max_train_s == 60
    quick = demo_config(tmp_path, quick=True)
    assert (quick.shape, quick.depth, quick.max_epochs) == ((32, 32, 32), 3, 2)
