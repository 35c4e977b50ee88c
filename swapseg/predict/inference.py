"""Test-time prediction: a checkpoint over a dataset folder, label-blind, whole brain.

:func:`predict_cases` writes ``PRED/<case>.nii.gz`` for every case: raw labels (the input's
convention, 0/1/2/4 for BraTS 2017-2021, or ``convention``) on the original grid with the
original affine and header, and ``PRED/predictions.json``. For each case it

1. loads the four modalities only: the case's segmentation file is never opened, so the
   same case with or without it gives byte-identical predictions;
2. keeps the whole brain box, found from the image alone, z-scored and zoomed as in
   training (:func:`swapseg.data.preprocess.prepare_brain`), whatever the input's size;
3. predicts it with the one predictor (:mod:`swapseg.evaluation.predictor`): one pass
   padded to the network's divisor, or sliding windows at the training window (the
   training shape, or the patch of a patch-mode checkpoint), chosen by ``inference``;
4. thresholds the regions and puts the labels back on the original grid (zeros outside the
   brain box).

``inference="auto"`` predicts a patch-mode checkpoint by windows of its patch (as its
validation ran: the network never saw more context), and a full-volume checkpoint in one
pass when that fits the memory (the rule in :mod:`~swapseg.evaluation.predictor`),
by windows of its training shape otherwise. ``one-pass`` and ``windows`` force either.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from torch import nn

from swapseg.data.brats import find_cases, load_case
from swapseg.data.check import check_headers
from swapseg.data.labels import CONVENTIONS, regions_to_labels
from swapseg.data.preprocess import prepare_brain, restore
from swapseg.devices import resolve_device
from swapseg.errors import InputError
from swapseg.evaluation.predictor import Inference, choose_window, predict_logits
from swapseg.io import atomic_path, write_json
from swapseg.models.registry import DEFAULT_MODEL, build_model
from swapseg.models.unet3d import Isensee3DUNet
from swapseg.progress import Progress, track
from swapseg.training.checkpoint import load_checkpoint
from swapseg.training.precision import autocast

__all__ = ["predict_volume", "predict_cases", "load_model", "resolve_device",
           "labels_from_probabilities", "training_window"]

#: Region probabilities above this are inside the region (logit 0).
THRESHOLD = 0.5


def _model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def predict_volume(model: nn.Module, image: np.ndarray | torch.Tensor,
                   window: int | Sequence[int] | None = None, overlap: float = 0.5,
                   tta: bool = False) -> np.ndarray:
    """Region probabilities float32 ``(3, D, H, W)`` for one image ``(C, D, H, W)``:
    the sigmoid of :func:`~swapseg.evaluation.predictor.predict_logits`."""
    x = torch.as_tensor(np.asarray(image, dtype=np.float32) if not torch.is_tensor(image)
                        else image.float())
    if x.dim() != 4:
        raise InputError(f"image must be (C, D, H, W), got shape {tuple(x.shape)}")
    logits = predict_logits(model, x[None].to(_model_device(model)), window, overlap, tta)
    return torch.sigmoid(logits[0]).cpu().numpy()  # (3, D, H, W)


def labels_from_probabilities(probs: np.ndarray, convention: str) -> np.ndarray:
    """Threshold region probabilities ``(3, *S)`` at 0.5 and map them to raw labels."""
    return regions_to_labels(probs > THRESHOLD, convention)


def _model_args(config: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments of the U-Net, from a flat or nested (``config["model"]``) dict."""
    source = config.get("model") if isinstance(config.get("model"), dict) else config
    params = inspect.signature(Isensee3DUNet.__init__).parameters
    return {k: v for k, v in source.items() if k in params and k != "self"}


def _state_dict(obj: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj.get("model"), dict):
        return obj["model"]
    raise InputError(f"{path}: checkpoint holds no model state (keys: {', '.join(obj)})")


def load_model(checkpoint: str | Path,
               device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the U-Net of a checkpoint: returns ``(model in eval mode, resolved config)``.

    Accepts what ``swapseg train`` writes (``{"model": state_dict, "model_kwargs": {...},
    "config": dict}``), read by :func:`swapseg.training.checkpoint.load_checkpoint` (the
    one checkpoint reader, ``weights_only``); without ``model_kwargs`` the constructor
    arguments come from the top of the config or from ``config["model"]``. The network is
    built by the model registry (:func:`swapseg.models.registry.build_model`), as in training.
    """
    path = Path(checkpoint)
    torch_device = resolve_device(device)  # an unusable device fails before any reading
    obj = load_checkpoint(path)
    config = obj.get("config") or {}
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    state = _state_dict(obj, path)
    kwargs = obj.get("model_kwargs") if isinstance(obj.get("model_kwargs"), dict) else None
    model = build_model(DEFAULT_MODEL, kwargs if kwargs is not None else _model_args(config))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(f"{path}: weights do not fit the configured U-Net ({first})") from None
    return model.to(torch_device).eval(), dict(config)


def training_window(config: dict[str, Any], path: Path) -> tuple[tuple[int, int, int], int]:
    """(window side per axis, zoom) the checkpoint's network saw: its patch in patch mode,
    its training shape otherwise."""
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    zoom = int(config.get("zoom", data.get("zoom", 1)) or 1)
    if config.get("mode") == "patch" and config.get("patch"):
        return (int(config["patch"]),) * 3, zoom
    for src in (config, data):
        for key in ("shape", "target_shape"):
            if src.get(key) is not None:
                return tuple(int(s) for s in src[key]), zoom  # type: ignore[return-value]
    raise InputError(f"{path}: checkpoint config records no training shape")


def _save_labels(labels: np.ndarray, loaded: Any, path: Path) -> None:
    header = loaded.header.copy()
    header.set_data_dtype(np.uint8)
    img = nib.Nifti1Image(labels.astype(np.uint8), loaded.affine, header)
    img.header.set_slope_inter(1.0, 0.0)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def _inference_of(config: dict[str, Any], inference: Inference,
                  window: int | None) -> tuple[Inference, int | tuple[int, ...] | None]:
    """A window given alone forces windows; ``auto`` on a patch checkpoint too."""
    if window is not None and inference == "one-pass":
        raise InputError("--window is for windows; it cannot go with --inference one-pass")
    if window is not None and inference == "auto":
        inference = "windows"
    if inference == "auto" and config.get("mode") == "patch":
        inference = "windows"
    return inference, window


def _predict_one(model: nn.Module, case: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """Predict one case label-blind and write ``<out>/<case>.nii.gz``; its record."""
    t0 = time.perf_counter()
    assert case.seg is None  # label-blind: predict_cases drops every segmentation
    loaded = load_case(case)
    prep = prepare_brain(loaded, settings["zoom"])
    win, facts = choose_window(model, prep.image.shape[1:], settings["inference"],
                               settings["window"])
    with autocast(settings["precision"], _model_device(model).type):  # as it was trained
        probs = predict_volume(model, prep.image, window=win, overlap=settings["overlap"],
                               tta=settings["tta"])
    labels = labels_from_probabilities(probs, settings["convention"] or case.convention)
    restored = np.asarray(restore(labels, prep.info)).astype(np.uint8)
    target = Path(settings["out"]) / f"{case.case_id}.nii.gz"
    _save_labels(restored, loaded, target)
    return {"case_id": case.case_id, "file": target.name, "shape": list(restored.shape),
            "brain_box": [e - s for s, e in zip(prep.info.bbox_start, prep.info.bbox_stop,
                                                strict=True)],
            "grid": list(prep.image.shape[1:]), "inference": "one-pass" if win is None
            else "windows", "window": None if win is None else list(win), **facts,
            "predict_s": time.perf_counter() - t0}


def _select(cases: list[Any], case_ids: Iterable[str] | None, input_dir: Any) -> list[Any]:
    if case_ids is None:
        return cases
    by_id = {c.case_id: c for c in cases}
    wanted = list(case_ids)
    missing = [i for i in wanted if i not in by_id]
    if missing:
        raise InputError(f"case {missing[0]} is not in {input_dir}")
    return [by_id[i] for i in wanted]


def predict_cases(checkpoint: str | Path, input_dir: str | Path, out_dir: str | Path, *,
                  inference: Inference = "auto", window: int | None = None,
                  overlap: float = 0.5, tta: bool = False, device: str = "auto",
                  convention: str | None = None, case_ids: Iterable[str] | None = None,
                  progress: Progress = "auto",
                  precision: str | None = None) -> dict[str, Any]:
    """Predict every case under ``input_dir`` (or those of ``case_ids``) label-blind;
    write ``out_dir/<case>.nii.gz``. See the module docstring.

    ``window``: the windows' side (default: the training window); given alone, it forces
    windows. ``convention`` overrides the label numbering of the output, ``precision``
    the autocast of the forward passes (default: the training run's).
    Returns (and writes as ``out_dir/predictions.json``) the settings and per-case records.
    """
    if convention is not None and convention not in CONVENTIONS:
        raise InputError(f"--convention {convention}: not one of {', '.join(CONVENTIONS)}")
    if not 0.0 <= overlap < 1.0:
        raise InputError(f"--overlap must be in [0, 1), got {overlap}")
    ckpt = Path(checkpoint)
    model, config = load_model(ckpt, device)
    inference, window = _inference_of(config, inference, window)
    train_window, zoom = training_window(config, ckpt)
    # images only, never the labels; every header checked before the first file is written
    cases = [dataclasses.replace(c, seg=None)
             for c in _select(find_cases(input_dir).cases, case_ids, input_dir)]
    for case in cases:
        check_headers(case)
    side = (window,) * 3 if isinstance(window, int) else (window or train_window)
    settings = {"inference": inference, "window": tuple(side), "zoom": zoom,
                "overlap": overlap, "tta": tta, "convention": convention,
                "precision": precision or config.get("precision", "32"), "out": str(out_dir)}
    choose_window(model, (8, 8, 8), inference, settings["window"])  # bad settings fail now
    records = [_predict_one(model, case, settings)
               for case in track(cases, "predict", progress, label=lambda c: c.case_id)]
    result = {"checkpoint": str(ckpt), "input": str(input_dir),
              "training_window": list(train_window), "device": str(_model_device(model)),
              **{k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()
                 if k != "out"},
              "n_cases": len(records), "total_s": sum(r["predict_s"] for r in records),
              "cases": records}
    write_json(Path(out_dir) / "predictions.json", result)
    return result
