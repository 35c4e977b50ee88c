"""Time to load one real case cold (decode gzip NIfTI + preprocess) and from the .npy cache.

    python benchmarks/data_cache.py [--data DIR] [--case ID] [--repeats 3] [--out JSON]

For each configuration (192^3 at zoom 1, the reference; 64^3 at zoom 3, CPU runs) it times
``BratsVolumes.load`` with an empty cache (cold: load_case + preprocess + write the cache)
and with the cache filled (cached: np.load), best of ``--repeats``, and prints one line per
configuration plus a JSON record with the environment. The OS page cache is not dropped, so
"cold" means "not preprocessed yet", with the .nii.gz bytes possibly already in RAM.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from swapseg.data.brats import BratsVolumes, find_cases
from swapseg.envinfo import environment
from swapseg.io import write_json

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "brats18-sample"
CONFIGS = [(192, 1), (64, 3)]


def _time_load(ds: BratsVolumes) -> float:
    t = time.perf_counter()
    prep = ds.load(0)
    _ = float(prep.image[0, 0, 0, 0])  # touch the data
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SAMPLE)
    ap.add_argument("--case", default="Brats18_2013_20_1")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, help="JSON record (default: print only)")
    args = ap.parse_args()
    case = next(c for c in find_cases(args.data).cases if c.case_id == args.case)
    rows = []
    for target, zoom in CONFIGS:
        cold, cached = [], []
        for _ in range(args.repeats):
            cache = Path(tempfile.mkdtemp(prefix="swapseg-cache-"))
            try:
                ds = BratsVolumes([case], target, cache_dir=cache, zoom=zoom)
                cold.append(_time_load(ds))
                cached.append(_time_load(BratsVolumes([case], target, cache_dir=cache,
                                                      zoom=zoom)))
                cache_bytes = sum(p.stat().st_size for p in cache.iterdir())
            finally:
                shutil.rmtree(cache)
        row = {"case": case.case_id, "target_shape": [target] * 3, "zoom": zoom,
               "cold_s": min(cold), "cached_s": min(cached),
               "speedup": min(cold) / min(cached), "cache_bytes": cache_bytes}
        rows.append(row)
        print(f"{case.case_id} {target}^3 zoom {zoom}: cold {row['cold_s']:.2f} s, "
              f"cached {row['cached_s']:.3f} s ({row['speedup']:.0f}x), cache "
              f"{cache_bytes / 2**20:.1f} MiB")
    record = {"benchmark": "data_cache", "repeats": args.repeats, "results": rows,
              "environment": environment()}
    if args.out:
        write_json(args.out, record)
    else:
        print(json.dumps(record["environment"]))


if __name__ == "__main__":
    main()
