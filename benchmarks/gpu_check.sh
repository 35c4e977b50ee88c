#!/usr/bin/env bash
# The GPU check, as one call of at most 8 minutes on a bare GPU machine (its own python3
# with torch, nothing fetched; packages it lacks can travel as wheels in .whl/, which
# this script installs into /tmp/site first). Every part has its own timeout, writes
# under DIR, and a failed or timed-out part does not stop the others:
#   1. tests    (90 s): the cuda-marked tests (pytest -m cuda tests/offload);
#   2. swap    (200 s): Isensee U-Net at 128^3 and 192^3: no swap, save_on_cpu, swap-all
#                       (cuda tier), config-4 (the tuned plan); median of 5 steps,
#                       max_memory_allocated, wait and prefetch figures;
#   3. copies   (40 s): pinned and pageable copy bandwidth both ways, through the
#                       cuda transport's own events; pinned bytes reserved vs counted;
#   4. largest (130 s): the largest cube in 128..256 under a 16 GiB cap for none,
#                       recompute-full, swap-host (the cuda tier).
# Writes DIR/gpu_check.json (every part's rc, result and log tail); DIR = the argument,
# else $OUT, else benchmarks/results/gpu. Exit status 0 only if every part passed.
#
#   bash benchmarks/gpu_check.sh [--dry-run] [DIR]
#
# --dry-run (CI runs it, tests/benchmarks/test_gpu_check_dry_run.py; under a minute): on
# CPU, the cuda transport's round trips under the CUDA runtime double
# (tests/offload/_cuda_double.py) as tests and as the copies part, small; the swap and
# largest parts only load their scripts (part "scripts"): training at their sizes takes
# minutes, and their own tests run them small.
set -u
cd "$(dirname "$0")/.."
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
DIR="${1:-${OUT:-benchmarks/results/gpu}}"
mkdir -p "$DIR"
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if [ -d .whl ] && ls .whl/*.whl > /dev/null 2>&1; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
start=$(date +%s)
RCS=""

part() {  # part NAME TIMEOUT_S CMD...: run CMD with a timeout, log to DIR/NAME.txt
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most $limit s)" >&2
    timeout "$limit" "$@" > "$DIR/$name.txt" 2>&1
    local rc=$?
    tail -n 6 "$DIR/$name.txt" >&2
    RCS="$RCS $name=$rc"
}

if [ "$DRY" -eq 1 ]; then
    part tests 60 "$PYTHON" -m pytest -q -p no:cacheprovider \
        tests/offload/test_cuda_protocol.py -k "round_trip"
    part copies 40 "$PYTHON" benchmarks/cuda_copy_bandwidth.py --dry-run --repeats 2 \
        --out "$DIR/copies.json"
    # the swap and largest parts: both scripts load and parse (one process: it is CI)
    part scripts 40 "$PYTHON" -c "
import sys, contextlib, io
sys.path.insert(0, 'benchmarks')
import swap_overhead
from swapseg.cli import main
for run in (lambda: swap_overhead.main(['--help']), lambda: main(['bench', 'largest', '--help'])):
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            run()
        except SystemExit as exc:
            assert exc.code in (0, None), exc.code
print('swap_overhead.py and swapseg bench largest load')
"
else
    part tests 90 "$PYTHON" -m pytest -q -p no:cacheprovider -m cuda tests/offload \
        --junitxml="$DIR/tests.xml"
    part swap 200 "$PYTHON" benchmarks/swap_overhead.py --device cuda --sides 128 192 \
        --steps 5 --warmup 1 --methods none save_on_cpu swap-all config-4 --rss-sides \
        --out "$DIR/swap.json"
    part copies 40 "$PYTHON" benchmarks/cuda_copy_bandwidth.py --out "$DIR/copies.json"
    part largest 130 "$PYTHON" -m swapseg.cli bench largest --device cuda --cap 16GiB \
        --range 128:256 --methods none,recompute-full,swap-host --probe-timeout 30 \
        --no-progress --out "$DIR/largest"
fi

"$PYTHON" - "$DIR" "$DRY" "$start" $RCS <<'PYEOF'
import json, os, sys, time
d, dry, start, rcs = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), sys.argv[4:]
rcs = dict((k, int(v)) for k, v in (x.split("=") for x in rcs))
results = {"swap": "swap.json", "copies": "copies.json", "largest": "largest/largest.json"}
def load(name):
    p = os.path.join(d, name)
    try:
        with open(p) as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:
        return {"missing": f"{p}: {exc}"}
def tail(name, n=25):
    try:
        with open(os.path.join(d, name + ".txt")) as fh:
            return fh.read().splitlines()[-n:]
    except OSError:
        return []
out = {"gpu_check": True, "dry_run": dry, "total_s": time.time() - start, "parts": {}}
if not dry:
    try:
        from swapseg.envinfo import environment
        out["environment"] = environment()
    except Exception as exc:  # noqa: BLE001 - the report is written regardless
        out["environment"] = {"error": repr(exc)}
for name, rc in rcs.items():
    part = {"rc": rc, "timed_out": rc in (124, 137), "tail": tail(name)}
    if name in results and (not dry or name == "copies"):
        part["result"] = load(results[name])
    out["parts"][name] = part
path = os.path.join(d, "gpu_check.json")
with open(path + ".tmp", "w") as fh:
    json.dump(out, fh, indent=2)
os.replace(path + ".tmp", path)
print(f"wrote {path}: " + ", ".join(f"{k} rc {v}" for k, v in rcs.items())
      + f", {out['total_s']:.0f} s")
sys.exit(0 if all(v == 0 for v in rcs.values()) else 1)
PYEOF
