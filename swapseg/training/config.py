"""Training configuration: one typed dataclass, validated, with presets as functions.

Every value of the reference protocol (Imai et al. 2019, after Isensee et al. 2017) is a
field with its default written once, here. Presets are functions returning a config:
:func:`tiny` (tests), :func:`demo` (``swapseg demo`` on a CPU), :func:`brats_full` and
:func:`brats_patch` (the paper's two arms). A resolved config round-trips through JSON,
so ``RUN/config.json`` is the whole record of a run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, get_args

from swapseg.errors import InputError
from swapseg.offload.policy import MemoryPlan, SwapPolicy
from swapseg.offload.record import check_fields
from swapseg.training.losses import LOSSES, Loss
from swapseg.training.precision import PRECISIONS, Precision

__all__ = ["TrainConfig", "Mode", "MODES", "tiny", "demo", "brats_full", "brats_patch",
           "PRESETS", "SWAP_ALL"]

Mode = Literal["full", "patch"]
MODES: tuple[str, ...] = get_args(Mode)

#: ``--swap all``: every saved activation swapped, to the tier that frees the run's
#: device's memory (``auto``, made concrete for the device before the run:
#: ``training.planning.on_device``).
SWAP_ALL = MemoryPlan(swap=SwapPolicy(), name="swap-all")


def option(default: Any, flag: str, *, resume: bool = False, metavar: str | None = None,
           low: float | None = None, high: float | None = None, high_open: bool = False,
           folder: bool = False) -> Any:
    """A field that the command line sets with ``flag`` (``swapseg.cli.config_flags`` makes
    the flag from the field: its type from the annotation, its help from the docstring).

    ``resume``: the flag applies with ``--resume`` (it changes when or where the run goes
    on, not what an epoch computes); ``low``/``high``: the bounds the flag's grammar checks
    (``high_open``: excluding ``high``); ``folder``: a folder the run writes to."""
    return dataclasses.field(default=default, metadata={
        "flag": flag, "resume": resume, "metavar": metavar, "low": low, "high": high,
        "high_open": high_open, "folder": folder})


@dataclass
class TrainConfig:
    # --- data -------------------------------------------------------------------------
    data: str = option("", "--data", resume=True, metavar="DIR")
    """Dataset root (any layout that ``swapseg.data.brats.find_cases`` reads)."""

    out: str = option("run", "--out", folder=True)
    """Run directory: config.json, splits.json, log.csv, checkpoints/ go here."""

    mode: Mode = option("full", "--mode")
    """``full``: train on whole (preprocessed) volumes; ``patch``: on random patches."""

    shape: tuple[int, int, int] = option((192, 192, 192), "--shape")
    """Volume shape after preprocessing (crop/pad around the brain, then ``zoom``)."""

    zoom: int = option(1, "--zoom", low=1)
    """Integer down-sampling factor after the crop (2 or 3 lets a CPU train real cases)."""

    patch: int = option(128, "--patch", low=1)
    """Patch side length in patch mode (the paper's 128^3 baseline)."""

    patches_per_volume: int = option(1, "--patches-per-volume", metavar="N", low=1)
    """Random patches drawn from each training volume per epoch (patch mode)."""

    tumor_fraction: float = option(0.0, "--tumor-fraction", metavar="F", low=0,
                                   high=1)
    """Share of training patches drawn around tumor voxels (0: uniform, as the reference)."""

    batch_size: int | None = option(None, "--batch", metavar="N", low=1)
    """Samples per step (None: 1 for full volumes, 2 for patches, the paper's: the largest
    that fit a 16 GB P100)."""

    augment: bool = option(True, "--no-augment")
    """Random flips and axis permutations, run in the DataLoader workers."""

    workers: int = option(2, "--workers", low=0)
    """DataLoader worker processes (0 loads in the training process)."""

    cache_dir: str | None = option(None, "--cache-dir", metavar="DIR", folder=True)
    """Where preprocessed volumes are cached as .npy; None uses ``<out>/cache``."""

    # --- cross-validation -------------------------------------------------------------
    folds: int = option(5, "--folds", low=3)
    """Number of folds. Fold k tests on part k, validates on part k+1 and trains on the
    rest, so 5 folds give the paper's 60/20/20 split."""

    fold: int = option(0, "--fold")
    """The fold this run trains (0-based)."""

    seed: int = option(0, "--seed")
    """Seed of the split, the weights, the sampling order and the augmentation."""

    # --- model ------------------------------------------------------------------------
    base_filters: int = option(16, "--base-filters", metavar="N", low=1)
    """Filters of the first U-Net level (level k has base_filters * 2**k)."""

    depth: int = option(5, "--depth", low=2)
    """U-Net encoder levels; input sides must be multiples of 2**(depth-1)."""

    dropout: float = option(0.3, "--dropout", low=0, high=1, high_open=True)
    """Dropout3d rate in the context modules."""

    # --- optimisation -----------------------------------------------------------------
    loss: Loss = option("dice", "--loss")
    """``dice``: the per-sample, per-channel soft Dice of the reference; ``dice_bce``:
    soft Dice plus binary cross-entropy."""

    dice_eps: float = 1e-5
    """Smoothing term of the soft Dice (numerator and denominator)."""

    lr: float = option(5e-4, "--lr")
    """Adam learning rate."""

    lr_factor: float = 0.5
    """Factor applied to the learning rate when validation loss stops improving."""

    lr_patience: int = option(10, "--lr-patience", metavar="N", low=0)
    """Epochs without validation-loss improvement before the learning rate drops."""

    early_stop: int = option(50, "--early-stop", metavar="N", low=1)
    """Epochs without validation-loss improvement before training stops."""

    max_epochs: int = option(500, "--epochs", resume=True, metavar="N", low=1)
    """Upper bound on epochs (ellisdg's n_epochs); early stopping usually ends sooner."""

    max_train_s: float | None = option(None, "--time-limit", resume=True,
                                        metavar="SECONDS")
    """Stop after the first epoch that ends past this many seconds of training (the sum of
    the logged epoch seconds, counted across resumes: a budget per run, as in ``swapseg
    experiment --time-limit`` and the demo's guard; resume with a larger value to go on).
    None: no limit."""

    precision: Precision = option("32", "--precision")
    """``32`` (float32), ``bf16-mixed`` (bfloat16 autocast around forward and loss) or
    ``16-mixed`` (float16 autocast plus a GradScaler); Lightning's names. Validation and
    prediction run under the same autocast. See ``swapseg.training.precision``."""

    compile: bool = option(False, "--compile")
    """Run the training forward through ``torch.compile(model)`` (inductor). Validation
    runs the eager model. See docs/training.md for what is swapped inside compiled graphs."""

    # --- engine -----------------------------------------------------------------------
    plan: MemoryPlan | None = None
    """What each step does with the tensors autograd saves: which it swaps (and where),
    which scopes it recomputes. None keeps everything on the device (the null context).
    ``--swap auto --memory-budget`` resolves to a plan once per run (RUN/plan.json,
    ``swapseg.training.planning``); config.json holds the plan that ran."""

    trace_step: int | None = option(None, "--trace-step", metavar="N", low=0)
    """Global training step (0-based) whose swap timeline goes to timeline.png/json."""

    device: str = option("auto", "--device", resume=True)
    """``auto`` (cuda if available), ``cpu``, ``cuda`` or ``cuda:N``."""

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)  # JSON gives lists
        if isinstance(self.plan, dict):
            self.plan = MemoryPlan.from_dict(self.plan)
        _check(self)

    @property
    def swap(self) -> SwapPolicy | None:
        """The swap half of ``plan`` (None without a plan or when it swaps nothing)."""
        return None if self.plan is None else self.plan.swap

    @property
    def batch(self) -> int:
        """The batch size in effect (``batch_size``, or the mode's default)."""
        if self.batch_size is not None:
            return self.batch_size
        return 1 if self.mode == "full" else 2

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        d["batch_size"] = self.batch  # resolved, so config.json says what ran
        d["plan"] = None if self.plan is None else self.plan.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = _legacy_plan(dict(d))
        check_fields(cls, d, "training config")
        return cls(**d)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def _check(c: TrainConfig) -> None:
    div = 2 ** (c.depth - 1)
    if c.mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, got {c.mode!r}")
    if len(c.shape) != 3 or any(s <= 0 or s % div for s in c.shape):
        raise InputError(f"shape {c.shape} must be 3 positive multiples of {div} "
                         f"(2**(depth-1), depth={c.depth})")
    if c.mode == "patch" and (c.patch <= 0 or c.patch % div or c.patch > min(c.shape)):
        raise InputError(f"patch {c.patch} must be a multiple of {div} and fit in {c.shape}")
    checks = [
        (c.zoom >= 1, f"zoom must be >= 1, got {c.zoom}"),
        (c.depth >= 2, f"depth must be >= 2, got {c.depth}"),
        (c.base_filters >= 1, f"base_filters must be >= 1, got {c.base_filters}"),
        (0.0 <= c.dropout < 1.0, f"dropout must be in [0, 1), got {c.dropout}"),
        (c.batch >= 1, f"batch_size must be >= 1, got {c.batch_size}"),
        (c.patches_per_volume >= 1, f"patches_per_volume must be >= 1, got "
                                    f"{c.patches_per_volume}"),
        (0.0 <= c.tumor_fraction <= 1.0,
         f"tumor_fraction must be in [0, 1], got {c.tumor_fraction}"),
        (c.workers >= 0, f"workers must be >= 0, got {c.workers}"),
        (c.folds >= 3, f"folds must be >= 3 (train/validation/test parts), got {c.folds}"),
        (0 <= c.fold < c.folds, f"fold must be in 0..{c.folds - 1}, got {c.fold}"),
        (c.loss in LOSSES, f"loss must be one of {', '.join(LOSSES)}, got {c.loss!r}"),
        (c.dice_eps > 0, f"dice_eps must be > 0, got {c.dice_eps}"),
        (c.lr > 0, f"lr must be > 0, got {c.lr}"),
        (c.precision in PRECISIONS,
         f"precision must be one of {', '.join(PRECISIONS)}, got {c.precision!r}"),
        (0 < c.lr_factor < 1, f"lr_factor must be in (0, 1), got {c.lr_factor}"),
        (c.lr_patience >= 0, f"lr_patience must be >= 0, got {c.lr_patience}"),
        (c.early_stop >= 1, f"early_stop must be >= 1, got {c.early_stop}"),
        (c.max_epochs >= 1, f"max_epochs must be >= 1, got {c.max_epochs}"),
        (c.max_train_s is None or c.max_train_s > 0,
         f"max_train_s must be > 0, got {c.max_train_s}"),
        (c.trace_step is None or c.trace_step >= 0,
         f"trace_step must be >= 0, got {c.trace_step}"),
        (c.plan is None or isinstance(c.plan, MemoryPlan),
         f"plan must be a MemoryPlan, got {type(c.plan).__name__}"),
        (c.trace_step is None or c.swap is not None,
         "--trace-step traces the swap engine: give a plan that swaps (--swap all|FILE|auto)"),
        (c.device == "auto" or c.device == "cpu" or c.device.startswith("cuda"),
         f"device must be auto, cpu or cuda[:N], got {c.device!r}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise InputError(msg)


def _legacy_plan(d: dict[str, Any]) -> dict[str, Any]:
    """A config.json of an older run: its ``swap`` policy, ``memory_budget_bytes`` and
    ``plan`` dict become the one ``plan`` (the budget itself lives in RUN/plan.json now)."""
    if "swap" not in d and "memory_budget_bytes" not in d:
        return d
    swap = d.pop("swap", None)
    d.pop("memory_budget_bytes", None)
    plan = d.get("plan")
    if isinstance(plan, dict):  # an auto plan: its swap half was also copied to "swap"
        d["plan"] = MemoryPlan.from_dict(plan)
    elif swap is not None:
        d["plan"] = MemoryPlan(swap=SwapPolicy.from_dict(swap), name="policy")
    return d


# --- presets ------------------------------------------------------------------------------

def brats_full(**changes: Any) -> TrainConfig:
    """The paper's full-volume arm: 192^3 volumes, batch 1."""
    return TrainConfig(mode="full", shape=(192, 192, 192)).replace(**changes)


def brats_patch(**changes: Any) -> TrainConfig:
    """The paper's patch baseline: 128^3 patches from 192^3 volumes, batch 2."""
    return TrainConfig(mode="patch", shape=(192, 192, 192), patch=128).replace(**changes)


def demo(**changes: Any) -> TrainConfig:
    """``swapseg demo`` on a 2-core CPU: the reference U-Net (base 16, depth 5) on 48^3
    phantoms, with every activation swapped (``SWAP_ALL``: to disk on a CPU). Differs from
    the protocol where minutes matter: lr 2e-3 (Adam converges in ~10 epochs instead of
    ~100), dropout 0.1, patience 5/15, at most 25 epochs or the first
    epoch ending past 7 minutes of training."""
    base = TrainConfig(mode="full", shape=(48, 48, 48), dropout=0.1, lr=2e-3, max_epochs=25,
                       lr_patience=5, early_stop=15, max_train_s=420.0, workers=1,
                       plan=SWAP_ALL, device="cpu")
    return base.replace(**changes)


def tiny(**changes: Any) -> TrainConfig:
    """Tests: 16^3 volumes, a 3-level U-Net with 4 filters, 2 epochs, no workers."""
    base = TrainConfig(mode="full", shape=(16, 16, 16), base_filters=4, depth=3,
                       dropout=0.0, max_epochs=2, workers=0, device="cpu")
    return base.replace(**changes)


PRESETS = {"brats_full": brats_full, "brats_patch": brats_patch, "demo": demo, "tiny": tiny}
