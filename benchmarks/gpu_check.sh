#!/usr/bin/env bash
# One script for when a GPU is at hand (finishes in under 14 minutes):
#   1. the cuda-marked tests (pytest -m cuda);
#   2. the swap benchmark on CUDA at 128^3 and 192^3: no swapping, save_on_cpu,
#      swap-all (cuda tier), paper config 4 (results written after each side);
#   3. the largest cube side that trains under a 16 GiB cap
#      (torch.cuda.set_per_process_memory_fraction), with and without swapping;
#   4. `swapseg bench --device cuda` at 128^3: every method (configs 1-4, auto,
#      recomputation, hybrid) side by side, next to the planner's predictions;
#   5. mixed precision at 128^3 and 192^3: fp32 vs bf16-mixed, each with and without
#      swap-all (benchmarks/precision.py: step time, engine-accounted saved bytes,
#      torch.cuda.max_memory_allocated), and --compile at 64^3 (compile time, step ratio).
#   6. `swapseg bench largest --device cuda`: the largest side in 128..256 under a 16 GiB
#      cap for none / recompute-full / swap-host (the cuda tier) / auto, one probe process
#      per side (max_memory_allocated as the peak), next to the planner's prediction.
# Writes one JSON: $DIR/gpu_check.json, DIR = first argument, else $OUT, else
# benchmarks/results/gpu. Usage: bash benchmarks/gpu_check.sh [DIR]
set -u
cd "$(dirname "$0")/.."
DIR="${1:-${OUT:-benchmarks/results/gpu}}"
mkdir -p "$DIR"
PY="${PYTHON:-python}"
if [ -f .venv/bin/activate ] && [ -z "${VIRTUAL_ENV:-}" ]; then . .venv/bin/activate; fi
start=$(date +%s)

echo "== 1/6 cuda tests" >&2
timeout 100 "$PY" -m pytest -q -m cuda -p no:cacheprovider tests \
    --junitxml="$DIR/cuda_tests.xml" > "$DIR/cuda_tests.txt" 2>&1
tests_rc=$?
tail -n 5 "$DIR/cuda_tests.txt" >&2

echo "== 2/6 swap benchmark on CUDA" >&2
timeout 170 "$PY" benchmarks/swap_overhead.py --device cuda --sides 128 192 --steps 5 \
    --warmup 1 --methods none save_on_cpu swap-all config-4 \
    --out "$DIR/swap_cuda.json" > "$DIR/swap_cuda.txt" 2>&1
bench_rc=$?
tail -n 12 "$DIR/swap_cuda.txt" >&2

echo "== 3/6 largest side under a 16 GiB cap" >&2
timeout 110 "$PY" benchmarks/_util.py --cap-gib 16 --budget-s 90 \
    --out "$DIR/largest_side.json" > "$DIR/largest_side.txt" 2>&1
largest_rc=$?
tail -n 3 "$DIR/largest_side.txt" >&2

echo "== 4/6 swapseg bench on CUDA at 128^3" >&2
timeout 100 "$PY" -m swapseg.cli bench --device cuda --shape 128 --steps 3 --warmup 1 \
    --out "$DIR/bench128" > "$DIR/bench128.txt" 2>&1
planbench_rc=$?
tail -n 14 "$DIR/bench128.txt" >&2

echo "== 5/6 mixed precision and compile on CUDA" >&2
timeout 90 "$PY" benchmarks/precision.py --device cuda --sides 128 192 --steps 3 \
    --out "$DIR/precision_cuda.json" --md "$DIR/precision_cuda.md" \
    > "$DIR/precision_cuda.txt" 2>&1
precision_rc=$?
tail -n 10 "$DIR/precision_cuda.txt" >&2
timeout 120 "$PY" benchmarks/compile_time.py --device cuda --side 64 --steps 3 \
    --out "$DIR/compile_cuda.json" > "$DIR/compile_cuda.txt" 2>&1
compile_rc=$?
tail -n 6 "$DIR/compile_cuda.txt" >&2

echo "== 6/6 swapseg bench largest on CUDA, 16 GiB cap, 128..256" >&2
timeout 180 "$PY" -m swapseg.cli bench largest --device cuda --cap 16GiB --range 128:256 \
    --methods none,recompute-full,swap-host,auto --probe-timeout 40 \
    --out "$DIR/largest16" > "$DIR/largest16.txt" 2>&1
largest16_rc=$?
tail -n 10 "$DIR/largest16.txt" >&2

"$PY" - "$DIR" "$tests_rc" "$bench_rc" "$largest_rc" "$planbench_rc" "$precision_rc" \
    "$compile_rc" "$largest16_rc" "$start" <<'PYEOF'
import json, os, sys, time
(d, tests_rc, bench_rc, largest_rc, planbench_rc, precision_rc, compile_rc, largest16_rc,
 start) = sys.argv[1], *map(int, sys.argv[2:])
def load(name):
    p = os.path.join(d, name)
    try:
        with open(p) as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:
        return {"missing": f"{p}: {exc}"}
def tail(name, n=40):
    try:
        with open(os.path.join(d, name)) as fh:
            return fh.read().splitlines()[-n:]
    except OSError:
        return []
from swapseg.envinfo import environment
out = {
    "gpu_check": True,
    "environment": environment(),
    "cuda_tests": {"rc": tests_rc, "tail": tail("cuda_tests.txt", 15)},
    "swap_benchmark": {"rc": bench_rc, "result": load("swap_cuda.json"),
                       "tail": tail("swap_cuda.txt", 25)},
    "largest_side": {"rc": largest_rc, "result": load("largest_side.json"),
                     "tail": tail("largest_side.txt", 20)},
    "planner_bench": {"rc": planbench_rc, "result": load("bench128/bench.json"),
                      "tail": tail("bench128.txt", 20)},
    "precision": {"rc": precision_rc, "result": load("precision_cuda.json"),
                  "tail": tail("precision_cuda.txt", 15)},
    "compile": {"rc": compile_rc, "result": load("compile_cuda.json"),
                "tail": tail("compile_cuda.txt", 10)},
    "largest_16gib": {"rc": largest16_rc, "result": load("largest16/largest.json"),
                      "tail": tail("largest16.txt", 20)},
    "total_s": time.time() - start,
}
path = os.path.join(d, "gpu_check.json")
with open(path + ".tmp", "w") as fh:
    json.dump(out, fh, indent=2)
os.replace(path + ".tmp", path)
print(f"wrote {path} (tests rc {tests_rc}, bench rc {bench_rc}, largest rc {largest_rc}, "
      f"planner bench rc {planbench_rc}, precision rc {precision_rc}, "
      f"compile rc {compile_rc}, largest 16 GiB rc {largest16_rc}, {out['total_s']:.0f} s)")
PYEOF
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$largest_rc" -eq 0 ] && \
    [ "$planbench_rc" -eq 0 ] && [ "$precision_rc" -eq 0 ] && [ "$compile_rc" -eq 0 ] && \
    [ "$largest16_rc" -eq 0 ]
