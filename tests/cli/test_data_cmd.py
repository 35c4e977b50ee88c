"""`swapseg data check` and `swapseg synth` from the command line."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from swapseg.cli import main
from swapseg.data.brats import find_cases, load_case


def test_synth_then_check(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "s"), "--cases", "2", "--shape", "24x28x20",
                 "--seed", "3", "--json", str(tmp_path / "synth.json")]) == 0
    assert json.loads((tmp_path / "synth.json").read_text())["cases"] == [
        "Synth_3_000", "Synth_3_001"]
    capsys.readouterr()
    assert main(["data", "check", str(tmp_path / "s"), "--json", str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out
    assert "layout:   brats2017-2018" in out
    assert "cases:    2 found, 2 good, 2 with segmentation" in out
    assert "shapes:   24x28x20 (2)" in out and "usable:   yes" in out
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["usable"] is True and report["n_cases"] == 2
    assert report["cases"][0]["labels"] == [0, 1, 2, 4]
    box = report["cases"][0]["brain_box"]
    assert 12 < min(box) and box[0] < 24 and box[1] < 28 and box[2] < 20
    loaded = load_case(find_cases(tmp_path / "s").cases[1])
    assert loaded.image.shape == (4, 24, 28, 20)


def test_check_lists_every_problem(tmp_path, capsys):
    from swapseg.data.synthetic import synthesize

    paths = synthesize(tmp_path, 4, 20, seed=1)
    (paths[0] / "Synth_1_000_t1.nii.gz").unlink()                      # missing modality
    f = paths[1] / "Synth_1_001_t2.nii.gz"
    f.write_bytes(f.read_bytes()[:200])                                # truncated
    import nibabel as nib
    seg = paths[2] / "Synth_1_002_seg.nii.gz"
    img = nib.load(str(seg))
    data = np.asarray(img.dataobj).copy()
    data[0, 0, 0] = 3
    nib.save(nib.Nifti1Image(data, img.affine), str(seg))              # label 3 in brats2017
    assert main(["data", "check", str(tmp_path)]) == 2
    cap = capsys.readouterr()
    assert "problems: 3" in cap.out
    assert "case Synth_1_000: missing modality t1" in cap.out
    assert "case Synth_1_001:" in cap.out and "Synth_1_001_t2.nii.gz" in cap.out
    assert "case Synth_1_002:" in cap.out and "label value 3 is outside" in cap.out
    # stderr is not a terminal here: one plain line per checked case, then the error
    *lines, last = cap.err.strip().splitlines()
    assert [ln.split(" (")[0] for ln in lines] == [
        f"checking: {i}/3 Synth_1_00{i}" for i in (1, 2, 3)]
    assert last.startswith("swapseg: error: dataset not usable: 3 problem(s)")
    assert main(["data", "check", str(tmp_path), "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "1 good" in out and "left out (--skip-bad): 3 bad case(s)" in out


def test_empty_folder_exit_2(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path)]) == 2
    assert "no BraTS or MSD cases found" in capsys.readouterr().err
    assert main(["synth", "--out", str(tmp_path), "--cases", "0"]) == 2


@pytest.mark.realdata
def test_real_sample_is_usable(brats_sample, capsys):
    assert main(["data", "check", str(brats_sample)]) == 0
    out = capsys.readouterr().out
    assert "cases:    12 found, 12 good, 12 with segmentation" in out
    assert "shapes:   240x240x155 (12)" in out and "labels:   {0,1,2,4} (12)" in out
    assert "brain:    largest box 146x181x146 voxels (a target of 160x192x160" in out


@pytest.mark.realdata
def test_real_copy_with_a_deleted_modality(brats_sample, tmp_path, capsys):
    # two cases linked whole, one with its files linked except T1ce: fast, nothing copied
    ids = ["Brats18_2013_20_1", "Brats18_CBICA_ABM_1", "Brats18_TCIA01_201_1"]
    for case_id in ids[:2]:
        os.symlink(brats_sample / case_id, tmp_path / case_id)
    broken = tmp_path / ids[2]
    broken.mkdir()
    for f in (brats_sample / ids[2]).iterdir():
        if not f.name.endswith("_t1ce.nii.gz"):
            os.symlink(f, broken / f.name)
    assert main(["data", "check", "--quick", str(tmp_path)]) == 2
    cap = capsys.readouterr()
    assert "case Brats18_TCIA01_201_1: missing modality t1ce" in cap.out
    assert "Brats18_TCIA01_201_1" in cap.err
    assert main(["data", "check", "--quick", "--skip-bad", str(tmp_path)]) == 0
    assert "3 found, 2 good" in capsys.readouterr().out


def test_quick_check_compares_headers(tmp_path, capsys):
    import nibabel as nib

    from swapseg.data.synthetic import synthesize

    paths = synthesize(tmp_path, 2, 20, seed=1)
    nib.save(nib.Nifti1Image(np.ones((20, 20, 19), np.int16), np.eye(4)),
             str(paths[1] / "Synth_1_001_t1ce.nii.gz"))
    assert main(["data", "check", "--quick", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert "case Synth_1_001:" in out and "Synth_1_001_t1ce.nii.gz: shape (20, 20, 19)" in out


def _rewrite(path, change):
    import nibabel as nib

    img = nib.load(str(path))
    data = change(np.asarray(img.dataobj))
    nib.save(nib.Nifti1Image(data, img.affine), str(path))


@pytest.mark.parametrize(("what", "file", "change", "message"), [
    ("4-D segmentation", "seg", lambda d: np.stack([d, d], -1), "holds more than one volume"),
    ("non-integer labels", "seg", lambda d: np.where(d == 2, 2.5, d).astype(np.float32),
     "label value 2.5 is not an integer"),
    ("empty modality", "t1ce", np.zeros_like, "modality t1ce is zero everywhere"),
])
def test_check_names_the_bad_file(tmp_path, capsys, what, file, change, message):
    from swapseg.data.synthetic import synthesize

    paths = synthesize(tmp_path, 2, (17, 19, 16), seed=2)
    bad = paths[1] / f"{paths[1].name}_{file}.nii.gz"
    _rewrite(bad, change)
    assert main(["data", "check", str(tmp_path), "--no-progress"]) == 2, what
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1  # --no-progress: the error line only
    assert err.startswith("swapseg: error: dataset not usable: 1 problem(s)")
    assert str(bad) in err and message in err


def test_quick_check_finds_a_4d_segmentation(tmp_path, capsys):
    from swapseg.data.synthetic import synthesize

    paths = synthesize(tmp_path, 1, 16, seed=0)
    seg = paths[0] / f"{paths[0].name}_seg.nii.gz"
    _rewrite(seg, lambda d: np.stack([d, d, d], -1))
    assert main(["data", "check", str(tmp_path), "--quick", "--no-progress"]) == 2
    assert f"{seg}: shape (16, 16, 16, 3) holds more than one volume" in capsys.readouterr().err


def test_single_case_folder_says_pass_the_parent(tmp_path, capsys):
    from swapseg.data.synthetic import synthesize

    paths = synthesize(tmp_path, 1, 16, seed=0)
    assert main(["data", "check", str(paths[0])]) == 2
    err = capsys.readouterr().err
    assert err == (f"swapseg: error: {paths[0]}: this looks like a single case; "
                   "pass its parent folder\n")
