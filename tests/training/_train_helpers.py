"""Small in-memory datasets and an engine stand-in for the training tests."""

from __future__ import annotations

import contextlib

import torch
from torch.utils.data import Dataset


class BlobVolumes(Dataset):
    """Tiny learnable volumes: the regions are thresholds of smoothed channel 0.

    Items follow the data layer's dict: image (4, *shape), target (3, *shape), case_id.
    """

    def __init__(self, n: int, shape: tuple[int, int, int] = (16, 16, 16), seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            image = torch.randn(4, *shape, generator=g)
            smooth = torch.nn.functional.avg_pool3d(image[None, :1], 5, 1, 2)[0, 0]
            wt = smooth > 0.0
            tc = smooth > 0.15
            et = smooth > 0.3
            self.items.append({"image": image, "target": torch.stack([wt, tc, et]).float(),
                               "case_id": f"case{i:02d}"})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


class NullStats:
    """Stand-in for the engine's SwapStats when the engine is absent."""

    packed = swapped = deduplicated = kept = bytes_out = bytes_in = peak_saved_bytes = 0
    wait_s = 0.0
    by_scope: dict = {}
    events: list = []

    def as_dict(self) -> dict:
        return {"packed": 0, "swapped": 0, "deduplicated": 0, "kept": 0, "bytes_out": 0,
                "bytes_in": 0, "peak_saved_bytes": 0, "wait_s": 0.0}


@contextlib.contextmanager
def null_swap(model, policy, *, trace=False):
    yield NullStats()
