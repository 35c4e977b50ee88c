"""Run the swap planners through nnU-Net's own planning API, or as a dry run.

``plan_experiment`` writes nnU-Net plans (``nnUNetPlansSwap...json``) with nnU-Net's
``plan_experiment_dataset``; ``dry_run`` plans the same in memory and returns the
configuration's swapseg record, whose ``table`` ``format_table`` prints.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
from typing import Any

from swapseg.errors import InputError
from swapseg.integrations.nnunet.fit import DEFAULT_MAX_SLOWDOWN, DEFAULT_PROFILE
from swapseg.integrations.nnunet.planner import PLAN_KEY, PLANNERS

__all__ = ["dataset_id", "plan_experiment", "dry_run", "format_table"]


def dataset_id(text: str) -> int:
    """An nnU-Net dataset ID from ``501`` or ``Dataset501_Name``."""
    m = re.fullmatch(r"(?:Dataset)?(\d{1,3})(?:_.*)?", text.strip())
    if not m or not 1 <= int(m.group(1)) <= 999:
        raise InputError(f"dataset must be an ID (1..999) or DatasetXXX_Name, got {text!r}")
    return int(m.group(1))


def _dataset_name(did: int) -> str:
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name
    for var in ("nnUNet_raw", "nnUNet_preprocessed"):
        if not os.environ.get(var):
            raise InputError(f"set {var} (see nnU-Net's docs)")
    try:
        return convert_id_to_dataset_name(did)
    except RuntimeError:
        raise InputError(f"dataset {did} is in neither $nnUNet_raw nor "
                         "$nnUNet_preprocessed") from None


def _ensure_fingerprint(did: int, name: str, quiet: bool) -> None:
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset
    if os.path.isfile(os.path.join(os.environ["nnUNet_preprocessed"], name,
                                   "dataset_fingerprint.json")):
        return
    if not os.path.isdir(os.path.join(os.environ["nnUNet_raw"], name)):
        raise InputError(f"dataset {name} has no fingerprint and is not in $nnUNet_raw")
    n_proc = int(os.environ.get("nnUNet_def_n_proc", "1"))
    with _quiet(quiet):
        extract_fingerprint_dataset(did, num_processes=n_proc, clean=False, verbose=False,
                                    show_progress_bar=not quiet)


@contextlib.contextmanager
def _quiet(quiet: bool) -> Any:
    """nnU-Net's planners print every configuration; a dry run shows only its table."""
    if not quiet:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _planner(name: str, profile: str, max_slowdown: float,
             max_patch: tuple[int, ...] | None) -> Any:
    if name not in PLANNERS:
        raise InputError(f"-pl {name}: not a swap planner (one of {', '.join(PLANNERS)})")
    return functools.partial(PLANNERS[name], device_profile=profile,
                             max_slowdown=max_slowdown, max_patch=max_patch)


def plan_experiment(dataset: str, planner: str = "nnUNetPlannerSwap",
                    gpu_memory_gb: float | None = None, profile: str = DEFAULT_PROFILE,
                    max_slowdown: float = DEFAULT_MAX_SLOWDOWN,
                    max_patch: tuple[int, ...] | None = None,
                    plans_name: str | None = None,
                    preprocessor: str = "DefaultPreprocessor") -> tuple[dict, str]:
    """nnU-Net's ``plan_experiment_dataset`` with a swap planner; (plans, identifier).

    The fingerprint is extracted first when the dataset has none. nnU-Net writes the
    plans file only at the end, so an error leaves no half-written plans."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiment_dataset
    did = dataset_id(dataset)
    cls = _planner(planner, profile, max_slowdown, max_patch)
    _ensure_fingerprint(did, _dataset_name(did), quiet=False)
    return plan_experiment_dataset(did, cls, gpu_memory_gb, preprocessor, None, plans_name)


def dry_run(dataset: str, configuration: str = "3d_fullres",
            planner: str = "nnUNetPlannerSwap", gpu_memory_gb: float | None = None,
            profile: str = DEFAULT_PROFILE, max_slowdown: float = DEFAULT_MAX_SLOWDOWN,
            max_patch: tuple[int, ...] | None = None) -> dict:
    """The swap planner's record of ``configuration`` without writing plans (a fingerprint
    is extracted, as nnU-Net's planning needs one)."""
    did = dataset_id(dataset)
    cls = _planner(planner, profile, max_slowdown, max_patch)
    name = _dataset_name(did)
    _ensure_fingerprint(did, name, quiet=True)
    kwargs = {} if gpu_memory_gb is None else {"gpu_memory_target_in_gb": gpu_memory_gb}
    with _quiet(True):
        p = cls(did, **kwargs)
        p.save_plans = lambda plans: None  # a dry run writes no plans file
        plans = p.plan_experiment()
    conf = plans["configurations"].get(configuration)
    if conf is None or PLAN_KEY not in conf:
        planned = [c for c, v in plans["configurations"].items() if PLAN_KEY in v]
        raise InputError(f"-c {configuration}: the swap planner sizes "
                         f"{', '.join(planned) or 'no configuration'} of {name}")
    return {"dataset": name, "configuration": configuration, **conf[PLAN_KEY]}


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g}"


def format_table(record: dict) -> str:
    """The dry run's table: each row's patch, batch, plan, predicted peak beside nnU-Net's
    own estimate, predicted step and slowdown."""
    head = (f"{record['dataset']} {record['configuration']}: {_gib(record['budget_bytes'])} GiB "
            f"target, profile {record['device_profile']}, slowdown bound "
            f"{record['max_slowdown']:.0%}")
    cols = ("", "patch", "batch", "plan", "peak GiB", "nnU-Net GiB", "diff", "step s",
            "slowdown", "fits")
    rows = [cols]
    for r in record["table"]:
        est = r["nnunet_estimate_bytes"]
        diff = f"{(r['predicted_peak_bytes'] - est) / est:+.0%}" if est else "-"
        plan = (r["plan"] or {}).get("name", "keep-all") if r["fits"] else "-"
        rows.append((r["label"], "x".join(map(str, r["patch_size"])), str(r["batch_size"]),
                     plan, _gib(r["predicted_peak_bytes"]), _gib(est), diff,
                     f"{r['predicted_step_s']:.3f}", f"{r['predicted_slowdown']:+.1%}",
                     "yes" if r["fits"] else "no"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) if i > 3 else c.ljust(w)
                       for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()
             for row in rows]
    return "\n".join([head, *lines])
