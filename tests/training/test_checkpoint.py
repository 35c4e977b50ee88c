import json
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from swapseg.cli import main
from swapseg.errors import InputError
from swapseg.training.checkpoint import (
    _main,
    convert_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def _draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), torch.rand(1).item()


def test_round_trip_and_rng_restore(tmp_path):
    p = tmp_path / "ck" / "last.pt"
    state = rng_state()
    save_checkpoint(p, {"model": {"w": torch.ones(2)}, "rng": state})
    draws = _draws()
    set_rng_state(load_checkpoint(p)["rng"])
    assert _draws() == draws
    assert [f.name for f in p.parent.iterdir()] == ["last.pt"]  # no temporaries left
    # the current format needs no allow-list at all: plain weights_only loading reads it
    plain = torch.load(p, weights_only=True)
    assert isinstance(plain["rng"]["python"][1], list)
    assert isinstance(plain["rng"]["numpy"]["key"], list)


def _old_format(path: Path) -> None:
    """A checkpoint as the previous format wrote it: numpy's RNG state as an ndarray."""
    rng = {"python": random.getstate(), "numpy": np.random.get_state(),
           "torch": torch.get_rng_state()}
    torch.save({"model": {"w": torch.ones(2)}, "rng": rng}, path)


def test_old_format_loads_through_the_numpy_allow_list_and_converts(tmp_path, capsys):
    old = tmp_path / "old.pt"
    _old_format(old)
    draws = _draws()
    with pytest.raises(pickle.UnpicklingError):  # what the allow-list is needed for
        torch.load(old, weights_only=True)
    set_rng_state(load_checkpoint(old)["rng"])
    assert _draws() == draws
    convert_checkpoint(old, tmp_path / "new.pt")
    set_rng_state(torch.load(tmp_path / "new.pt", weights_only=True)["rng"])
    assert _draws() == draws
    # the command-line form converts in place
    assert _main([str(old)]) == 0 and "wrote" in capsys.readouterr().out
    torch.load(old, weights_only=True)


@pytest.mark.parametrize("content, words", [(b"not a pickle", "not a readable checkpoint"),
                                            (b"", "not a readable checkpoint"),
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
    assert load_checkpoint(p, require=None) == {"weights": 1}


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _write_payload(path: Path, marker: Path, form: str) -> None:
    obj = {"model": {"w": torch.ones(1)}, "epoch": _Payload(marker)}
    if form == "torch":
        torch.save(obj, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump(obj, fh, protocol=int(form[-1]))


@pytest.mark.parametrize("form", ["torch", "pickle2", "pickle4"])
def test_a_pickle_carrying_code_is_refused_and_never_runs(tmp_path, form):
    ck, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    _write_payload(ck, marker, form)
    # the payload is live: unsafe loading runs it
    torch.load(ck, weights_only=False) if form == "torch" else pickle.loads(ck.read_bytes())
    assert marker.exists()
    marker.unlink()
    refused = r"evil.pt: refused: it holds .*(io|builtins)\.open"
    with pytest.raises(InputError, match=refused) as exc:
        load_checkpoint(ck)
    assert len(str(exc.value).splitlines()) == 1
    assert not marker.exists()


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from swapseg.data.synthetic import synthesize

    data = tmp_path_factory.mktemp("synth")
    synthesize(data, 6, 16, seed=1)
    return data


def _one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_predict_refuses_a_malicious_checkpoint(tmp_path, synth, capsys):
    ck, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    _write_payload(ck, marker, "torch")
    err = _one_line_exit_2(["predict", "--checkpoint", str(ck), "--input", str(synth),
                            "--out", str(tmp_path / "pred")], capsys)
    assert "refused" in err and "evil.pt" in err
    assert not marker.exists() and not (tmp_path / "pred").exists()


def test_train_resume_refuses_a_malicious_checkpoint(tmp_path, synth, capsys):
    from swapseg.training.config import tiny

    run, marker = tmp_path / "run", tmp_path / "pwned"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(tiny(data=str(synth), out=str(run)).to_dict()))
    _write_payload(run / "checkpoints" / "last.pt", marker, "pickle2")
    err = _one_line_exit_2(["train", "--out", str(run), "--resume", "--no-progress"], capsys)
    assert "refused" in err and "last.pt" in err
    assert not marker.exists()
