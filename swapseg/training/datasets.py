"""The training and validation datasets of one fold, built from the data layer."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from swapseg.data.brats import BratsVolumes, Case, find_cases
from swapseg.data.patches import BratsPatches
from swapseg.errors import InputError
from swapseg.training.config import TrainConfig

__all__ = ["find_training_cases", "build_datasets", "cache_dir_of", "worker_error_message"]


def find_training_cases(data: str | Path) -> dict[str, Case]:
    """Cases with a segmentation under ``data``, by case id (InputError if none)."""
    if not str(data):
        raise InputError("no data directory given (--data DIR)")
    index = find_cases(data)
    cases = {c.case_id: c for c in index.cases if c.seg is not None}
    if not cases:
        raise InputError(f"{data}: no cases with a segmentation to train on")
    return cases


def cache_dir_of(config: TrainConfig) -> Path:
    return Path(config.cache_dir) if config.cache_dir else Path(config.out) / "cache"


def build_datasets(config: TrainConfig, cases: dict[str, Case],
                   split: dict[str, list[str]]) -> tuple[Dataset, Dataset]:
    """(train, val): augmented volumes or patches for training; whole volumes for validation."""
    cache = cache_dir_of(config)

    def volumes(ids: list[str], augment: bool) -> BratsVolumes:
        return BratsVolumes([cases[i] for i in ids], config.shape, cache_dir=cache,
                            augment=augment, seed=config.seed, zoom=config.zoom)

    if not split["train"] or not split["val"]:
        raise InputError(f"fold {config.fold} has an empty training or validation part; "
                         "need more cases or fewer folds")
    val = volumes(split["val"], augment=False)
    if config.mode == "full":
        return volumes(split["train"], augment=config.augment), val
    train = BratsPatches(volumes(split["train"], augment=config.augment), config.patch,
                         per_volume=config.patches_per_volume,
                         tumor_fraction=config.tumor_fraction, seed=config.seed)
    return train, val


def worker_error_message(exc: BaseException) -> str:
    """The original one-line message of an error re-raised from a DataLoader worker.

    PyTorch re-raises a worker's exception as the same type with the message
    "Caught X in DataLoader worker process N. Original Traceback ... X: <message>".
    """
    text = str(exc)
    if not text.startswith("Caught ") or "Original Traceback" not in text:
        return text
    name = type(exc).__name__
    last = [ln for ln in text.strip().splitlines() if f"{name}: " in ln]
    return last[-1].split(f"{name}: ", 1)[1] if last else text.splitlines()[0]
