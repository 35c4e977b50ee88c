"""Two processes, one preprocessing cache: nobody reads a half-written file, nothing is
corrupted, no temporary is left behind."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from swapseg.data.dataset import BratsVolumes, cache_key
from swapseg.data.layouts import find_cases
from swapseg.data.loader import load_case
from swapseg.data.preprocess import preprocess

SHAPE = 32  # 512 KiB images: writes long enough for a reader to catch one mid-way
HANG_S = 900  # a hang guard, not a time limit: a loaded machine is slow, not hung

# Each round, every process drops the entry's .json (forcing a rewrite of the whole
# entry), loads the case, and reads whatever complete entry is on disk directly, without
# the loader's rebuild-on-error fallback, which would hide a torn file.
CHILD = r"""
import hashlib, json, sys
from pathlib import Path
from swapseg.data.dataset import BratsVolumes, cache_key, _with
from swapseg.data.layouts import find_cases

data, cache, expected, rounds = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
expected = json.loads(Path(expected).read_text())
cases = find_cases(data).cases
ds = BratsVolumes(cases, SIDE, cache_dir=cache)

def digest(prep):
    return [hashlib.sha1(prep.image.tobytes()).hexdigest(),
            hashlib.sha1(prep.seg.tobytes()).hexdigest()]

def read_directly(i, stem, meta):
    # The other process may drop the .json between our load and our read: that is a
    # whole file removed, not a torn one, so load (rewriting the entry) and read again.
    # Each retry answers one of the other process's drops, so this loop ends.
    while True:
        try:
            return BratsVolumes._read_cache(stem, meta)
        except FileNotFoundError as exc:
            if exc.filename != str(meta):
                raise  # only the marker is ever deleted; a missing array is a bug
            ds.load(i)

checked = 0
for r in range(rounds):
    for i, case in enumerate(cases):
        stem = cache / f"{case.case_id}-{cache_key(case, ds.target_shape, 1)}"
        meta = _with(stem, ".json")
        if r % 2:
            meta.unlink(missing_ok=True)
        assert digest(ds.load(i)) == expected[case.case_id], ("load", case.case_id)
        got = digest(read_directly(i, stem, meta))
        assert got == expected[case.case_id], ("read", case.case_id)
        checked += 1
print(checked)
""".replace("SIDE", str(SHAPE))


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from swapseg.data.synthetic import synthesize

    data = tmp_path_factory.mktemp("synth")
    synthesize(data, 4, SHAPE, seed=3)
    return data


def _expected(data: Path) -> dict[str, list[str]]:
    out = {}
    for case in find_cases(data).cases:
        prep = preprocess(load_case(case), (SHAPE,) * 3, 1)
        out[case.case_id] = [hashlib.sha1(prep.image.tobytes()).hexdigest(),
                             hashlib.sha1(prep.seg.tobytes()).hexdigest()]
    return out


def _no_temporaries(cache: Path) -> None:
    assert not [p.name for p in cache.iterdir() if p.name.startswith(".")]


def test_two_processes_rewriting_and_reading_one_cache(synth, tmp_path):
    cache, expected = tmp_path / "cache", tmp_path / "expected.json"
    expected.write_text(json.dumps(_expected(synth)))
    cmd = [sys.executable, "-c", CHILD, str(synth), str(cache), str(expected), "12"]
    procs = [subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [p.communicate(timeout=HANG_S) for p in procs]
    for p, (out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
        assert int(out) == 12 * 4  # every round read every complete entry directly
    _no_temporaries(cache)
    assert len(list(cache.glob("*.json"))) == 4


def test_two_train_runs_started_together_share_a_cache(synth, tmp_path):
    cache = tmp_path / "shared-cache"
    runs = [tmp_path / "a", tmp_path / "b"]
    procs = [subprocess.Popen(
        [sys.executable, "-m", "swapseg.cli", "train", "--data", str(synth), "--out", str(run),
         "--preset", "tiny", "--shape", str(SHAPE), "--folds", "3", "--epochs", "1",
         "--cache-dir", str(cache), "--no-progress"],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for run in runs]
    for p in procs:
        _, err = p.communicate(timeout=HANG_S)
        assert p.returncode == 0, err
    # same seed, same data: runs that both read whole, correct volumes end identical
    a, b = (torch.load(r / "checkpoints" / "last.pt", weights_only=True)["model"] for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (runs[0] / "cache").exists()  # the shared folder was used, not OUT/cache
    entries = 0
    for case in find_cases(synth).cases:  # the test part of the split is never loaded
        stem = f"{case.case_id}-{cache_key(case, (SHAPE,) * 3, 1)}"
        if not (cache / f"{stem}.json").is_file():
            continue
        entries += 1
        prep = preprocess(load_case(case), (SHAPE,) * 3, 1)
        assert np.array_equal(np.load(cache / f"{stem}.image.npy"), prep.image)
        assert np.array_equal(np.load(cache / f"{stem}.seg.npy"), prep.seg)
    assert entries >= 2  # the training and validation cases
    _no_temporaries(cache)
    assert json.loads((runs[1] / "config.json").read_text())["cache_dir"] == str(cache)
    assert BratsVolumes(find_cases(synth).cases, SHAPE, cache_dir=cache)[0]["image"].shape[0] == 4
