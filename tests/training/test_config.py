import json

import pytest

from swapseg.errors import InputError
from swapseg.offload.policy import MemoryPlan, RecomputePolicy, SwapPolicy
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


def test_json_round_trip_with_plan():
    plan = MemoryPlan(swap=SwapPolicy(tier="host", exclude=("decoder.*",)),
                      recompute=RecomputePolicy(scopes=("encoder.*",), mode="speed"),
                      name="hybrid")
    c = tiny(plan=plan, trace_step=3)
    d = json.loads(json.dumps(c.to_dict()))
    assert d["plan"]["swap"]["exclude"] == ["decoder.*"] and d["batch_size"] == 1
    assert "swap" not in d and "memory_budget_bytes" not in d  # one plan, nothing beside it
    back = TrainConfig.from_dict(d)
    assert back == c.replace(batch_size=1)
    assert back.plan == plan and back.swap == plan.swap and back.shape == (16, 16, 16)


def test_old_config_json_translates_to_one_plan():
    new = tiny().to_dict()
    del new["plan"]
    # a run saved with a swap policy only
    old = {**new, "swap": {"tier": "disk", "prefetch": 4}, "memory_budget_bytes": None,
           "plan": None}
    back = TrainConfig.from_dict(old)
    assert back.plan == MemoryPlan(swap=SwapPolicy(tier="disk", prefetch=4), name="policy")
    # a --swap auto run: the plan dict (whose swap half was copied to "swap") wins
    auto = {"name": "hybrid-x", "swap": {"exclude": ["decoder.*"]},
            "recompute": {"scopes": ["decoder"], "mode": "speed"}}
    back = TrainConfig.from_dict({**new, "swap": auto["swap"], "memory_budget_bytes": 2**26,
                                  "plan": auto})
    assert back.plan.name == "hybrid-x" and back.plan.recompute.mode == "speed"
    assert back.swap == SwapPolicy(exclude=("decoder.*",))
    # no swapping at all
    assert TrainConfig.from_dict({**new, "swap": None, "memory_budget_bytes": None,
                                  "plan": None}).plan is None
    with pytest.raises(InputError, match="unknown SwapPolicy field"):
        TrainConfig.from_dict({**new, "swap": {"tier": "host", "typo": 1}})


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
    ({"trace_step": 2}, "--trace-step traces the swap engine"),
    ({"plan": MemoryPlan(recompute=RecomputePolicy()), "trace_step": 2}, "plan that swaps"),
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


def test_demo_swaps_all_to_the_tier_that_frees_its_devices_memory(tmp_path):
    import torch

    from swapseg.experiments.demo import demo_config
    from swapseg.training.config import SWAP_ALL
    from swapseg.training.planning import on_device

    for config in (demo(), demo_config(tmp_path), demo_config(tmp_path, quick=True)):
        assert config.device == "cpu" and config.plan == SWAP_ALL
        # on a CPU, host memory is device memory: only the disk tier frees any
        assert on_device(config, torch.device("cpu")).swap == SwapPolicy(tier="disk")
        assert on_device(config, torch.device("cuda", 1)).swap == SwapPolicy(tier="cuda")
    assert demo(plan=None).plan is None  # a plan given wins
    with pytest.raises(InputError, match="device must be auto, cpu or cuda"):
        demo(device="gpu")


def test_demo_config_time_limit(tmp_path):
    from swapseg.experiments.demo import demo_config

    assert demo_config(tmp_path).max_train_s == demo().max_train_s == 420.0
    assert demo_config(tmp_path, time_limit=0).max_train_s is None
    assert demo_config(tmp_path, time_limit=60).max_train_s == 60
    quick = demo_config(tmp_path, quick=True)
    assert (quick.shape, quick.depth, quick.max_epochs) == ((32, 32, 32), 3, 2)
