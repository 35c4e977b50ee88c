"""predict_volume (full, windows, TTA), checkpoint loading, predict_cases to NIfTI."""

from __future__ import annotations

import itertools
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from evalcases import AFFINE, TINY_MODEL, constant_model, save_checkpoint, tiny_model

from swapseg.errors import InputError
from swapseg.models import registry
from swapseg.predict.inference import load_model, predict_cases, predict_volume


def _image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((4, *shape)).astype(np.float32)


def test_full_volume_matches_direct_forward() -> None:
    model = tiny_model().eval()
    img = _image((16, 12, 8))
    probs = predict_volume(model, img)
    with torch.no_grad():
        direct = torch.sigmoid(model(torch.from_numpy(img)[None]))[0].numpy()
    assert probs.shape == (3, 16, 12, 8) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, direct, atol=1e-6)


def test_odd_shape_is_padded_and_cropped_back() -> None:
    model = tiny_model()
    img = _image((13, 18, 11))
    probs = predict_volume(model, img)
    assert probs.shape == (3, 13, 18, 11)
    assert np.all((probs >= 0) & (probs <= 1))
    windowed = predict_volume(model, img, window=8, overlap=0.5)
    assert windowed.shape == (3, 13, 18, 11)
    assert np.all((windowed >= 0) & (windowed <= 1))
    assert model.training  # the caller's mode is restored


def test_one_window_covering_the_volume_equals_full() -> None:
    model = tiny_model()
    img = _image((16, 16, 16), seed=1)
    full = predict_volume(model, img)
    win = predict_volume(model, img, window=16)
    np.testing.assert_allclose(win, full, atol=1e-5)
    # smaller windows see less context, so they must give (slightly) different values
    assert np.abs(predict_volume(model, img, window=8) - full).max() > 1e-4


def test_tta_is_the_sigmoid_of_the_mean_logit_over_eight_flips() -> None:
    model = tiny_model().eval()
    img = _image((8, 12, 16), seed=2)
    x = torch.from_numpy(img)[None]  # (1, 4, D, H, W)
    expected = torch.zeros(1, 3, 8, 12, 16)
    combos = [c for k in range(4) for c in itertools.combinations((2, 3, 4), k)]
    assert len(combos) == 8
    with torch.no_grad():
        for axes in combos:
            y = model(torch.flip(x, axes) if axes else x)
            expected += torch.flip(y, axes) if axes else y
    tta = predict_volume(model, img, tta=True)
    np.testing.assert_allclose(tta, torch.sigmoid(expected / 8)[0].numpy(), atol=1e-6)
    assert np.abs(tta - predict_volume(model, img)).max() > 1e-4


def test_tta_leaves_a_flip_equivariant_model_unchanged() -> None:
    conv = torch.nn.Conv3d(4, 3, 1)  # pointwise: flipping commutes with it
    img = _image((5, 6, 7), seed=3)
    np.testing.assert_allclose(predict_volume(conv, img, tta=True), predict_volume(conv, img),
                               atol=1e-6)


def test_bad_window_and_image() -> None:
    model = tiny_model()
    with pytest.raises(InputError, match="window 6"):
        predict_volume(model, _image((8, 8, 8)), window=6)
    with pytest.raises(InputError, match="overlap"):
        predict_volume(model, _image((8, 8, 8)), window=8, overlap=1.0)
    with pytest.raises(InputError, match="shape"):
        predict_volume(model, np.zeros((8, 8, 8), np.float32))


@pytest.mark.parametrize("nested", [False, True])
def test_load_model_round_trip(tmp_path: Path, nested: bool) -> None:
    model = tiny_model().eval()
    path = save_checkpoint(tmp_path / "best.pt", model, nested=nested)
    loaded, config = load_model(path)
    assert config["shape"] == [16, 16, 16]
    img = _image((8, 8, 8))
    np.testing.assert_array_equal(predict_volume(loaded, img), predict_volume(model, img))


def test_load_model_builds_through_the_model_registry(tmp_path: Path, monkeypatch) -> None:
    built = []

    def factory(**kwargs):
        built.append(kwargs)
        return tiny_model()

    monkeypatch.setitem(registry.MODELS, registry.DEFAULT_MODEL, factory)
    path = save_checkpoint(tmp_path / "best.pt", tiny_model(), nested=True)
    load_model(path)
    assert built == [TINY_MODEL]
    torch.save({"model": tiny_model().state_dict(), "model_kwargs": {"depth": 3, "bad": 1},
                "config": {}}, path)
    monkeypatch.undo()  # the real factory: a keyword the network does not take
    with pytest.raises(InputError, match="isensee"):
        load_model(path)


def test_load_model_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="missing.pt"):
        load_model(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(InputError, match="junk.pt"):
        load_model(junk)
    wrong = tmp_path / "wrong.pt"
    torch.save({"model": tiny_model().state_dict(),
                "config": {"base_filters": 8, "depth": 3, "shape": [16] * 3}}, wrong)
    with pytest.raises(InputError, match="wrong.pt: weights do not fit"):
        load_model(wrong)
    torch.save({"config": {}}, wrong)
    with pytest.raises(InputError, match="wrong.pt"):
        load_model(wrong)


@pytest.mark.parametrize(("logits", "label"), [((5.0, -5.0, -5.0), 2),   # WT only: edema
                                               ((5.0, 5.0, -5.0), 1),    # TC: necrotic core
                                               ((5.0, 5.0, 5.0), 4)])    # ET: enhancing
def test_predict_cases_writes_labels_in_the_original_space(
        tmp_path: Path, dataset: tuple[Path, list[str]], logits, label: int) -> None:
    root, ids = dataset
    ckpt = save_checkpoint(tmp_path / "best.pt", constant_model(logits))
    out = tmp_path / "pred"
    result = predict_cases(ckpt, root, out, progress=False)
    assert result["n_cases"] == 2 and (out / "predictions.json").is_file()
    for cid in ids:
        img = nib.load(out / f"{cid}.nii.gz")
        ref = nib.load(root / cid / f"{cid}_flair.nii.gz")
        data = np.asarray(img.dataobj)
        assert data.shape == (23, 19, 17) and data.dtype == np.uint8
        np.testing.assert_allclose(img.affine, AFFINE, atol=1e-5)
        np.testing.assert_allclose(img.header.get_zooms(), ref.header.get_zooms(), atol=1e-5)
        # the label everywhere inside the head's bounding box, 0 outside it
        head = np.asarray(ref.dataobj) != 0
        box = tuple(slice(w.min(), w.max() + 1) for w in np.nonzero(head))
        assert np.all(data[box] == label)
        assert data.sum() == label * data[box].size
