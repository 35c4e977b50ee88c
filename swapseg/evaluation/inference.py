"""Prediction: full-volume or sliding-window inference, flip TTA, NIfTI in the original space.

:func:`predict_volume` turns one preprocessed image ``(4, D, H, W)`` into region
probabilities ``(3, D, H, W)`` (sigmoid of the network's logits):

- ``window=None``: the whole volume in one forward pass (zero-padded at the far end of
  each axis up to a multiple of the network's divisor, and cropped back);
- ``window=W``: MONAI's ``sliding_window_inference`` with W^3 windows, ``overlap``
  between neighbours, and Gaussian blending of the window probabilities;
- ``tta=True``: the mean of the probabilities over all 8 combinations of flips along the
  three spatial axes (the identity included). Flips are the augmentation the reference
  trains with, so every flipped view is one the network has seen.

:func:`predict_cases` runs a checkpoint over a dataset folder and writes
``PRED/<case>.nii.gz``: raw labels (the input's convention, 0/1/2/4 for BraTS 2017-2021)
on the original grid with the original affine and header.
"""

from __future__ import annotations

import inspect
import itertools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from torch import nn

from swapseg.errors import InputError
from swapseg.io import atomic_path, write_json

__all__ = ["predict_volume", "predict_cases", "load_model", "resolve_device",
           "labels_from_probabilities"]

#: Region probabilities above this are inside the region.
THRESHOLD = 0.5


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _full_volume(model: nn.Module, x: torch.Tensor, divisor: int) -> torch.Tensor:
    """Sigmoid of one forward pass over ``x`` (1, C, D, H, W), padded to the divisor."""
    spatial = x.shape[2:]
    pad = [(-s) % divisor for s in spatial]
    if any(pad):
        # F.pad lists pads from the last axis backwards, (before, after) per axis
        x = nn.functional.pad(x, [p for d in reversed(pad) for p in (0, d)])
    out = torch.sigmoid(model(x))
    return out[(..., *(slice(0, s) for s in spatial))]


def _windowed(model: nn.Module, x: torch.Tensor, window: int, overlap: float) -> torch.Tensor:
    from monai.inferers import sliding_window_inference

    def probs(batch: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(model(batch))

    return sliding_window_inference(x, roi_size=(window,) * 3, sw_batch_size=1,
                                    predictor=probs, overlap=overlap, mode="gaussian")


def predict_volume(model: nn.Module, image: np.ndarray | torch.Tensor,
                   window: int | None = None, overlap: float = 0.5,
                   tta: bool = False) -> np.ndarray:
    """Region probabilities float32 ``(3, D, H, W)`` for one image ``(C, D, H, W)``."""
    divisor = int(getattr(model, "divisor", 1))
    if window is not None and (window <= 0 or window % divisor):
        raise InputError(f"window {window} must be a positive multiple of {divisor}")
    if not 0.0 <= overlap < 1.0:
        raise InputError(f"overlap must be in [0, 1), got {overlap}")
    x = torch.as_tensor(np.asarray(image, dtype=np.float32) if not torch.is_tensor(image)
                        else image.float())
    if x.dim() != 4:
        raise InputError(f"image must be (C, D, H, W), got shape {tuple(x.shape)}")
    x = x[None].to(_model_device(model))  # (1, C, D, H, W)
    flips: list[tuple[int, ...]] = [()]
    if tta:
        flips = [c for k in range(4) for c in itertools.combinations((2, 3, 4), k)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            total: torch.Tensor | None = None
            for axes in flips:
                xi = torch.flip(x, axes) if axes else x
                p = (_full_volume(model, xi, divisor) if window is None
                     else _windowed(model, xi, window, overlap))
                p = (torch.flip(p, axes) if axes else p).float().cpu()
                total = p if total is None else total + p
    finally:
        model.train(was_training)
    assert total is not None
    return (total[0] / len(flips)).numpy()


def labels_from_probabilities(probs: np.ndarray, convention: str) -> np.ndarray:
    """Threshold region probabilities ``(3, *S)`` at 0.5 and map them to raw labels."""
    from swapseg.data.labels import regions_to_labels

    return regions_to_labels(probs > THRESHOLD, convention)


def _model_args(config: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments of the U-Net, from a flat or nested (``config["model"]``) dict."""
    from swapseg.models.unet3d import Isensee3DUNet

    source = config.get("model") if isinstance(config.get("model"), dict) else config
    params = inspect.signature(Isensee3DUNet.__init__).parameters
    return {k: v for k, v in source.items() if k in params and k != "self"}


def _state_dict(obj: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    for key in ("model", "model_state", "model_state_dict", "state_dict"):
        if isinstance(obj.get(key), dict):
            return obj[key]
    if obj and all(torch.is_tensor(v) for v in obj.values()):
        return obj  # a bare state dict
    raise InputError(f"{path}: checkpoint holds no model state (keys: {', '.join(obj)})")


def load_model(checkpoint: str | Path,
               device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the U-Net of a checkpoint: returns ``(model in eval mode, resolved config)``.

    Accepts what ``swapseg train`` writes (``{"model": state_dict, "model_kwargs": {...},
    "config": dict}``), and without ``model_kwargs`` takes the constructor arguments from
    the top of the config or from ``config["model"]``; the other usual state-dict keys
    work too. Loaded with ``weights_only=True``: a file carrying code is refused.
    """
    from swapseg.models.unet3d import Isensee3DUNet

    path = Path(checkpoint)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint")
    from swapseg.training.checkpoint import load_checkpoint

    obj = load_checkpoint(path, require=None)  # weights_only: refuses pickled code
    if not isinstance(obj, dict):
        raise InputError(f"{path}: checkpoint is a {type(obj).__name__}, not a dict")
    config = obj.get("config") or {}
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    state = _state_dict(obj, path)
    kwargs = obj.get("model_kwargs") if isinstance(obj.get("model_kwargs"), dict) else None
    model = Isensee3DUNet(**(kwargs if kwargs is not None else _model_args(config)))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(f"{path}: weights do not fit the configured U-Net ({first})") from None
    return model.to(resolve_device(device)).eval(), dict(config)


def _grid(config: dict[str, Any], path: Path) -> tuple[tuple[int, int, int], int]:
    """Preprocessing shape and zoom the model was trained with."""
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    for src in (config, data):
        for key in ("shape", "target_shape"):
            if src.get(key) is not None:
                zoom = int(src.get("zoom", config.get("zoom", 1)) or 1)
                return tuple(int(s) for s in src[key]), zoom  # type: ignore[return-value]
    raise InputError(f"{path}: checkpoint config records no volume shape; pass --shape")


def _save_labels(labels: np.ndarray, loaded: Any, path: Path) -> None:
    header = loaded.header.copy()
    header.set_data_dtype(np.uint8)
    img = nib.Nifti1Image(labels.astype(np.uint8), loaded.affine, header)
    img.header.set_slope_inter(1.0, 0.0)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def _default_window(config: dict[str, Any], window: int | str | None) -> int | None:
    """``"auto"``: the patch side for a patch-mode checkpoint (as its validation ran),
    the whole volume otherwise; ``None`` or 0: the whole volume."""
    if window == "auto":
        return int(config["patch"]) if config.get("mode") == "patch" and config.get("patch") \
            else None
    return int(window) if window else None


def predict_cases(checkpoint: str | Path, input_dir: str | Path, out_dir: str | Path, *,
                  window: int | str | None = "auto", overlap: float = 0.5, tta: bool = False,
                  device: str = "auto", convention: str | None = None,
                  shape: Sequence[int] | None = None, zoom: int | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Predict every case under ``input_dir``; write ``out_dir/<case>.nii.gz``.

    ``window``: see :func:`_default_window`. ``shape``/``zoom`` override the preprocessing
    grid recorded in the checkpoint.
    ``convention`` overrides the label numbering of the output (default: the input's).
    Returns (and writes as ``out_dir/predictions.json``) the settings and per-case seconds.
    """
    from tqdm import tqdm

    from swapseg.data.brats import find_cases, load_case, preprocess, restore

    ckpt = Path(checkpoint)
    model, config = load_model(ckpt, device)
    window = _default_window(config, window)
    grid, grid_zoom = _grid(config, ckpt) if shape is None else (tuple(shape), 1)
    zoom = int(zoom if zoom is not None else grid_zoom)
    cases = find_cases(input_dir).cases
    out = Path(out_dir)
    records = []
    for case in tqdm(cases, desc="predict", unit="case", disable=not progress):
        t0 = time.perf_counter()
        loaded = load_case(case)
        prep = preprocess(loaded, grid, zoom=zoom)
        probs = predict_volume(model, prep.image, window=window, overlap=overlap, tta=tta)
        labels = labels_from_probabilities(probs, convention or case.convention)
        restored = np.asarray(restore(labels, prep.info)).astype(np.uint8)
        target = out / f"{case.case_id}.nii.gz"
        _save_labels(restored, loaded, target)
        records.append({"case_id": case.case_id, "file": target.name,
                        "shape": list(restored.shape), "predict_s": time.perf_counter() - t0})
    result = {"checkpoint": str(ckpt), "input": str(input_dir), "shape": list(grid),
              "zoom": zoom, "window": window, "overlap": overlap, "tta": tta,
              "device": str(_model_device(model)), "n_cases": len(records),
              "total_s": sum(r["predict_s"] for r in records), "cases": records}
    write_json(out / "predictions.json", result)
    return result
