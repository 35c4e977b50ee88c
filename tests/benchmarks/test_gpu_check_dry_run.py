"""benchmarks/gpu_check.sh --dry-run: the GPU check's plumbing, on CPU under the double."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run_passes_and_writes_its_report(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("OUT", None)
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run",
                           str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry_run"] is True
    assert {k: v["rc"] for k, v in report["parts"].items()} == \
        {"tests": 0, "copies": 0, "scripts": 0}
    copies = report["parts"]["copies"]["result"]
    assert copies["pinned"]["pinned"] and not copies["pageable"]["pinned"]
    assert copies["pinned"]["device_to_host_gb_s"] > 0
    reserved = copies["reserved"]
    assert reserved["counted_reserved_bytes"] > reserved["tensor_bytes"]
