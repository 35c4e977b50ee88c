"""Label-blind, whole-brain prediction at any input size (issue 15)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from evalcases import AFFINE, constant_model, save_checkpoint, tiny_model, write_cases

import swapseg.evaluation.predictor as predictor
from swapseg.data.brats import find_cases, load_case
from swapseg.data.synthetic import synthesize
from swapseg.errors import InputError
from swapseg.evaluation.predictor import choose_window, predicted_bytes
from swapseg.predict.inference import predict_cases, resolve_device

#: odd sizes, a head larger than the 16^3 training window of the checkpoints below
BIG = (41, 37, 29)


def _without_labels(src: Path, dst: Path) -> Path:
    """A copy of the dataset at ``src`` with every ``_seg`` file left out."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*_seg.nii*"))
    assert not list(dst.rglob("*_seg.nii*"))
    return dst


@pytest.mark.parametrize("inference", ["one-pass", "windows", "auto"])
def test_the_whole_brain_box_is_predicted(tmp_path: Path, inference: str) -> None:
    root = tmp_path / "data"
    ids = write_cases(root, 1, shape=BIG)
    ckpt = save_checkpoint(tmp_path / "best.pt", constant_model((5.0, 5.0, -5.0)))
    result = predict_cases(ckpt, root, tmp_path / "pred", inference=inference,
                           progress=False)
    rec = result["cases"][0]
    assert rec["inference"] == ("windows" if inference == "windows" else "one-pass")
    assert min(rec["brain_box"]) > 16  # larger than the training window on every axis
    img = nib.load(tmp_path / "pred" / f"{ids[0]}.nii.gz")
    data = np.asarray(img.dataobj)
    assert data.shape == BIG and data.dtype == np.uint8
    np.testing.assert_allclose(img.affine, AFFINE, atol=1e-5)
    head = np.asarray(nib.load(root / ids[0] / f"{ids[0]}_flair.nii.gz").dataobj) != 0
    box = tuple(slice(w.min(), w.max() + 1) for w in np.nonzero(head))
    assert np.all(data[box] == 1)  # TC: label 1 at every voxel of the brain box
    assert int((data != 0).sum()) == data[box].size  # and nothing outside it


def test_same_prediction_with_and_without_the_labels(tmp_path: Path) -> None:
    """Byte-identical files whether or not the case's _seg file is there, even when the
    labels reach outside the image's nonzero voxels and past a small training window."""
    root = tmp_path / "with"
    paths = synthesize(root, 2, (29, 23, 19), seed=4)
    seg = paths[0] / f"{paths[0].name}_seg.nii.gz"
    img = nib.load(seg)
    labels = np.asarray(img.dataobj).copy()
    labels[0, 0, 0] = 2  # a label in the background: it once widened the brain box
    nib.save(nib.Nifti1Image(labels, img.affine, img.header), seg)
    bare = _without_labels(root, tmp_path / "without")
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "best.pt", tiny_model())
    outs = []
    for data, name in ((root, "p1"), (bare, "p2")):
        predict_cases(ckpt, data, tmp_path / name, progress=False)
        outs.append(tmp_path / name)
    for p in paths:
        a = (outs[0] / f"{p.name}.nii.gz").read_bytes()
        b = (outs[1] / f"{p.name}.nii.gz").read_bytes()
        assert a == b
    assert nib.load(outs[0] / f"{paths[0].name}.nii.gz").shape == (29, 23, 19)


def test_predict_never_opens_the_segmentation(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "data"
    write_cases(root, 1, shape=(19, 17, 15))
    ckpt = save_checkpoint(tmp_path / "best.pt", tiny_model())
    opened: list[str] = []
    real_load = nib.load

    def spy(path, *a, **k):
        opened.append(str(path))
        return real_load(path, *a, **k)

    monkeypatch.setattr(nib, "load", spy)
    predict_cases(ckpt, root, tmp_path / "pred", progress=False)
    assert opened and not [p for p in opened if p.endswith("_seg.nii.gz")]


def test_auto_chooses_by_predicted_bytes(monkeypatch) -> None:
    model = tiny_model()
    need = predicted_bytes(model, (30, 30, 30))
    # padded to the divisor 4; 4 first-level filters of 4 float32 bytes
    assert need == 32 ** 3 * 4 * 4 * predictor.ACTIVATION_MAPS + predictor.WORKSPACE_BYTES
    monkeypatch.setattr(predictor, "available_bytes", lambda device: 4 * need)
    assert choose_window(model, (30, 30, 30), "auto", 16)[0] is None
    monkeypatch.setattr(predictor, "available_bytes", lambda device: need)  # > half of it
    win, facts = choose_window(model, (30, 30, 30), "auto", 16)
    assert win == (16, 16, 16) and facts == {"predicted_one_pass_bytes": need,
                                             "available_bytes": need}
    assert choose_window(model, (30, 30, 30), "one-pass", 16)[0] is None
    assert choose_window(model, (30, 30, 30), "windows", 16)[0] == (16, 16, 16)
    with pytest.raises(InputError, match="window 6"):
        choose_window(model, (30, 30, 30), "windows", 6)


def test_too_little_memory_for_one_pass_predicts_by_windows(tmp_path: Path,
                                                            monkeypatch) -> None:
    root = tmp_path / "data"
    write_cases(root, 1, shape=BIG)
    ckpt = save_checkpoint(tmp_path / "best.pt", constant_model((5.0, -5.0, -5.0)))
    monkeypatch.setattr(predictor, "available_bytes", lambda device: 1)
    result = predict_cases(ckpt, root, tmp_path / "pred", progress=False)
    assert result["cases"][0]["inference"] == "windows"
    assert result["cases"][0]["window"] == [16, 16, 16]  # the checkpoint's training shape
    saved = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert saved["cases"][0]["available_bytes"] == 1


def test_patch_checkpoints_predict_by_windows_of_their_patch(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_cases(root, 1, shape=(23, 19, 17))
    ckpt = tmp_path / "best.pt"
    torch.save({"model": tiny_model().state_dict(),
                "config": {"shape": [32] * 3, "mode": "patch", "patch": 8, "zoom": 1,
                           "base_filters": 4, "depth": 3, "dropout": 0.0}}, ckpt)
    result = predict_cases(ckpt, root, tmp_path / "pred", progress=False)
    assert result["cases"][0]["inference"] == "windows"
    assert result["cases"][0]["window"] == [8, 8, 8]


def test_case_ids_select_cases(tmp_path: Path) -> None:
    root = tmp_path / "data"
    ids = write_cases(root, 3, shape=(17, 17, 17))
    ckpt = save_checkpoint(tmp_path / "best.pt", tiny_model())
    result = predict_cases(ckpt, root, tmp_path / "pred", case_ids=[ids[2]], progress=False)
    assert [r["case_id"] for r in result["cases"]] == [ids[2]]
    with pytest.raises(InputError, match="case nope is not in"):
        predict_cases(ckpt, root, tmp_path / "pred2", case_ids=["nope"], progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_cuda_without_cuda_is_one_input_error() -> None:
    with pytest.raises(InputError, match="--device cuda: no such CUDA device"):
        resolve_device("cuda")


@pytest.mark.realdata
def test_a_model_trained_on_small_phantoms_predicts_a_real_case(brats_sample: Path,
                                                                tmp_path: Path) -> None:
    """A 48^3 checkpoint on a 240x240x155 case: the whole brain, with or without labels."""
    case = next(c for c in find_cases(brats_sample).cases if c.case_id == "Brats18_2013_20_1")
    data, bare = tmp_path / "data", tmp_path / "bare" / case.case_id
    data.mkdir()
    (data / case.case_id).symlink_to(brats_sample / case.case_id)
    bare.mkdir(parents=True)
    for f in case.images.values():  # links, never copies: real data stays in ../shared
        (bare / f.name).symlink_to(f)
    ckpt = tmp_path / "best.pt"
    torch.save({"model": constant_model((5.0, -5.0, -5.0)).state_dict(),
                "config": {"shape": [48] * 3, "zoom": 1, "mode": "full", "base_filters": 4,
                           "depth": 3, "dropout": 0.0}}, ckpt)
    a = predict_cases(ckpt, data, tmp_path / "p1", progress=False)
    predict_cases(ckpt, bare.parent, tmp_path / "p2", progress=False)
    out = tmp_path / "p1" / f"{case.case_id}.nii.gz"
    assert out.read_bytes() == (tmp_path / "p2" / out.name).read_bytes()
    img = nib.load(out)
    ref = nib.load(case.images["flair"])
    assert img.shape == ref.shape == (240, 240, 155)
    np.testing.assert_allclose(img.affine, ref.affine)
    brain = np.any(load_case(case).image != 0, axis=0)
    pred = np.asarray(img.dataobj)
    assert set(np.unique(pred).tolist()) == {0, 2}
    assert np.all(pred[brain] == 2)  # every brain voxel predicted (edema everywhere)
    assert max(a["cases"][0]["brain_box"]) > 48
