"""Two swap engines side by side: host-tier swap-all against no swap, alternating runs.

Each run is one subprocess that imports swapseg from one source tree (``PYTHONPATH``),
trains the Isensee U-Net (base 16, depth 5, 4 channels in, batch 1) at one cube side for
``--warmup`` + ``--steps`` steps (forward, loss, backward, Adam step) with either no
swapping or every saved tensor swapped to the host tier (prefetch 1), all steps under one
engine (so both engines prefetch in the learned order), and prints the median step time.
Runs alternate trees and methods, rotating the order every round, so load that drifts on
a shared machine spreads over all four. The table gives, per tree and side, the median
over runs of each method's step time, and the ratio swap / no swap (of the medians, and
the median of the per-round ratios).

    git -C /work/main worktree add /work/wt-old 46b9aef
    python benchmarks/engine_ab.py --old /work/wt-old --new . --runs 7
    python benchmarks/engine_ab.py --old /work/wt-old --new . --runs 1 --sides 32 --dry-run

Writes ``benchmarks/results/<date>-engine-ab.json`` and ``.md`` (not with ``--dry-run``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

#: The child: one tree, one side, one method; prints {"step_s": [...]} as JSON.
CHILD = r"""
import json, sys, time, torch
import swapseg
from swapseg.models.unet3d import Isensee3DUNet
from swapseg.offload import SwapPolicy, swap_activations
side, method, warmup, steps = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
model = Isensee3DUNet()
opt = torch.optim.Adam(model.parameters(), lr=5e-4)
x = torch.randn(1, 4, side, side, side)
policy = SwapPolicy(tier="host", prefetch=1) if method == "swap" else None
try:
    from swapseg.offload import OffloadEngine
except ImportError:  # the engine before the run-long rewrite: one context for every step
    OffloadEngine = None
times = []
def step():
    opt.zero_grad(set_to_none=True)
    model(x).square().mean().backward()
    opt.step()
if OffloadEngine is not None:
    with OffloadEngine(model, policy) as engine:
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            with engine.step():
                step()
            times.append(time.perf_counter() - t0)
else:
    with swap_activations(model, policy):
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
print(json.dumps({"step_s": times[warmup:], "swapseg": swapseg.__file__}))
"""

METHODS = ("swap", "none")


def run_child(tree: Path, side: int, method: str, warmup: int, steps: int,
              threads: int | None) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory() as cwd:  # nothing on sys.path but the tree
        out = subprocess.run([sys.executable, "-c", CHILD, str(side), method, str(warmup),
                              str(steps)], env=env, cwd=cwd, capture_output=True, text=True,
                             check=False)
    if out.returncode != 0:
        raise SystemExit(f"child failed ({tree}, {side}, {method}):\n{out.stderr[-2000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if not res["swapseg"].startswith(str(tree)):
        raise SystemExit(f"child imported {res['swapseg']}, not from {tree}")
    return res


def measure(trees: dict[str, Path], sides: list[int], runs: int, warmup: int, steps: int,
            threads: int | None) -> dict[str, Any]:
    """{tree: {side: {method: [median step seconds per run]}}}, runs alternating."""
    combos = [(t, m) for t in trees for m in METHODS]
    out: dict[str, Any] = {t: {str(s): {m: [] for m in METHODS} for s in sides} for t in trees}
    for r in range(runs):
        for side in sides:
            k = r % len(combos)
            for tree, method in combos[k:] + combos[:k]:
                res = run_child(trees[tree], side, method, warmup, steps, threads)
                med = statistics.median(res["step_s"])
                out[tree][str(side)][method].append(med)
                print(f"run {r + 1}/{runs} {side}^3 {tree:>3} {method:>4}: {med:.3f} s",
                      flush=True)
    return out


def summarize(raw: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for tree, by_side in raw.items():
        for side, m in by_side.items():
            swap, none = m["swap"], m["none"]
            rows.append({"tree": tree, "side": int(side), "runs": len(swap),
                         "swap_s": statistics.median(swap), "none_s": statistics.median(none),
                         "ratio": statistics.median(swap) / statistics.median(none),
                         "ratio_per_round": statistics.median(
                             [a / b for a, b in zip(swap, none, strict=True)])})
    return rows


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"# Swap engine A/B ({meta['date']})", "",
             f"Trees: {meta['trees']}. {meta['runs']} alternating runs per tree, method and "
             f"side; each run {meta['warmup']} warm-up + {meta['steps']} timed steps in a "
             f"fresh process. Command: `{meta['command']}`.", "",
             "| tree | side | runs | swap-all (host) s | no swap s | ratio of medians | "
             "median per-round ratio |", "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["side"], r["tree"])):
        lines.append(f"| {r['tree']} | {r['side']}^3 | {r['runs']} | {r['swap_s']:.3f} | "
                     f"{r['none_s']:.3f} | {r['ratio']:.3f}x | {r['ratio_per_round']:.3f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", type=Path, required=True, help="source tree of the old engine")
    ap.add_argument("--new", type=Path, default=Path("."), help="source tree of the new one")
    ap.add_argument("--sides", type=int, nargs="+", default=[64, 96])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the children")
    ap.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--dry-run", action="store_true", help="print, write nothing")
    args = ap.parse_args()
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    for name, tree in trees.items():
        if not (tree / "swapseg" / "__init__.py").is_file():
            raise SystemExit(f"--{name} {tree}: not a swapseg source tree")
    raw = measure(trees, args.sides, args.runs, args.warmup, args.steps, args.threads)
    rows = summarize(raw)
    meta = {"date": datetime.date.today().isoformat(), "trees": {k: str(v) for k, v in
            trees.items()}, "runs": args.runs, "warmup": args.warmup, "steps": args.steps,
            "command": " ".join(["python", *sys.argv])}
    md = markdown(rows, meta)
    print(md)
    if not args.dry_run:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        stem = args.out_dir / f"{meta['date']}-engine-ab"
        stem.with_suffix(".json").write_text(json.dumps(
            {"meta": meta, "rows": rows, "raw": raw}, indent=2) + "\n")
        stem.with_suffix(".md").write_text(md)


if __name__ == "__main__":
    main()
