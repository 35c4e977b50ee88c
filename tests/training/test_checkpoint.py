import random

import numpy as np
import pytest
import torch

from swapseg.errors import InputError
from swapseg.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state


def test_round_trip_and_rng_restore(tmp_path):
    p = tmp_path / "ck" / "last.pt"
    state = rng_state()
    save_checkpoint(p, {"model": {"w": torch.ones(2)}, "rng": state})
    draws = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(load_checkpoint(p)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == draws
    assert [f.name for f in p.parent.iterdir()] == ["last.pt"]  # no temporaries left


@pytest.mark.parametrize("content, words", [(b"not a pickle", "not a readable checkpoint"),
                                            (None, "checkpoint not found")])
def test_bad_checkpoints_are_input_errors(tmp_path, content, words):
    p = tmp_path / "last.pt"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(InputError, match=words) as exc:
        load_checkpoint(p)
    assert "last.pt" in str(exc.value)


def test_a_dict_without_model_is_rejected(tmp_path):
    p = tmp_path / "x.pt"
    torch.save({"weights": 1}, p)
    with pytest.raises(InputError, match="no 'model' entry"):
        load_checkpoint(p)
