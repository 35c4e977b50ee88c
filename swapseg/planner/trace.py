"""Trace one training step under FakeTensorMode: what autograd saves, when, and at what cost.

No memory is allocated for activations: parameters become fake tensors and every op only
computes shapes. A :class:`~torch.utils._python_dispatch.TorchDispatchMode` records each op
(FLOPs, bytes read and written, module scope) and the life of each storage it creates
(weak-reference finalizers tell when the last tensor on a storage dies). A
``saved_tensors_hooks`` pair records every tensor autograd saves, with its storage, scope,
producing op and the backward ops that use it.

The hooks hand autograd a fake *clone* of each saved tensor. So the original storage dies
when forward code drops it (its "forward life"), and the clone dies when autograd releases
the saved variable (its "backward life"). The simulator combines the two per policy: a kept
tensor lives across both, a swapped one leaves the device in between.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensorMode,
)
from torch.utils._python_dispatch import TorchDispatchMode

from swapseg.offload.measure import autocast, default_loss
from swapseg.planner.loss import (
    Target,
    bind_target,
    measure_loss_saved,
    real_tensors,
    surrogate_loss,
)
from swapseg.planner.opcost import conv_key, cpu_workspace, op_flops

__all__ = ["OpRecord", "SavedRecord", "StorageRecord", "StepTrace", "trace_step", "LossFn"]

#: ``loss_fn(output) -> scalar tensor``: the caller's loss on the model's output (close
#: over a target if it needs one). Default: :func:`swapseg.offload.measure.default_loss`.
LossFn = Callable[[Any], torch.Tensor]


@dataclass
class OpRecord:
    index: int
    phase: str          # "fwd" or "bwd"
    name: str           # aten op packet, e.g. "aten.convolution"
    scope: str          # innermost module scope in forward; "" at the top level or in bwd
    flops: float        # from torch.utils.flop_counter; 0 for ops it does not count
    io_bytes: int       # bytes of tensor inputs plus outputs (memory traffic bound)
    cpu_workspace_bytes: int = 0  # a CPU conv's own buffers while it runs (opcost)
    conv: str = ""      # conv ops: "Cin,Cout,k,stride,D,H,W" of the input (for calibration)


@dataclass
class StorageRecord:
    uid: int
    nbytes: int
    kind: str                 # "act" (op output), "input", "grad" (alive at step end)
    produced_at: int          # op index; -1 for step inputs
    freed_at: int | None      # op index during/after which its last tensor died; None: survives
    producer: str = ""        # op name
    scope: str = ""


@dataclass
class SavedRecord:
    index: int                # pack order in forward
    uid: int                  # storage uid (StorageRecord.uid)
    nbytes: int               # storage bytes (what a swap moves)
    scope: str                # module scope at pack time
    packed_at: int            # op index of the op that saved it
    uses: list[int] = field(default_factory=list)   # bwd op indices of unpacks
    released_at: int | None = None                  # op index when autograd let it go


@dataclass
class StepTrace:
    """One traced training step. Op indices order forward then backward."""

    model: str
    input_shape: tuple[int, ...]
    ops: list[OpRecord]
    storages: dict[int, StorageRecord]
    saved: list[SavedRecord]
    param_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    n_fwd_ops: int
    module_inputs: dict[str, list[int]]   # module name -> storage uids of its first call's args
    module_ops: dict[str, tuple[int, int]]  # module name -> [first, last] forward op index
    trace_s: float = 0.0
    autocast_dtype: str = ""   # e.g. "torch.bfloat16" when traced under autocast

    @property
    def persistent_bytes(self) -> int:
        """Parameters and optimizer state: resident for the whole step."""
        return self.param_bytes + self.optimizer_bytes

    def unique_saved(self) -> dict[int, list[SavedRecord]]:
        out: dict[int, list[SavedRecord]] = {}
        for s in self.saved:
            out.setdefault(s.uid, []).append(s)
        return out

    def summary(self) -> dict[str, Any]:
        uniq = self.unique_saved()
        return {
            "model": self.model,
            "input_shape": list(self.input_shape),
            "ops": len(self.ops),
            "fwd_ops": self.n_fwd_ops,
            "saved_tensors": len(self.saved),
            "saved_storages": len(uniq),
            "saved_bytes": sum(r[0].nbytes for r in uniq.values()),
            "param_bytes": self.param_bytes,
            "grad_bytes": self.grad_bytes,
            "optimizer_bytes": self.optimizer_bytes,
            "fwd_flops": sum(o.flops for o in self.ops if o.phase == "fwd"),
            "bwd_flops": sum(o.flops for o in self.ops if o.phase == "bwd"),
            "trace_s": round(self.trace_s, 3),
            "autocast_dtype": self.autocast_dtype or None,
        }


#: Ops that only compute metadata or make views: no kernel moves data.
_NO_DATA = ("prim.",)


def _tensors(x: Any) -> Iterator[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (tuple, list)):
        for y in x:
            yield from _tensors(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from _tensors(y)


class _Recorder(TorchDispatchMode):
    """Records ops and storage lives; module hooks set ``scope``; saved hooks use it too."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[OpRecord] = []
        self.storages: dict[int, StorageRecord] = {}
        self.live: dict[int, list[int]] = {}   # storage cdata -> [uid, live tensor count]
        self.next_uid = 0
        self.phase = "fwd"
        self.scope: list[str] = [""]
        self.suspended = False
        # a saved tensor's fake clone (what unpack hands back) -> the original's uid: a
        # checkpoint that saves its inputs and reruns on the unpacked ones in backward
        # reuses that storage, it makes no new one
        self.clones: dict[int, int] = {}

    def now(self) -> int:
        return len(self.ops) - 1

    def uid_of(self, t: torch.Tensor) -> int | None:
        key = t.untyped_storage()._cdata
        entry = self.live.get(key)
        return entry[0] if entry else self.clones.get(key)

    def register(self, t: torch.Tensor, kind: str, producer: str = "") -> int:
        key = t.untyped_storage()._cdata
        entry = self.live.get(key)
        if entry is None and key in self.clones:  # a view of a saved tensor's clone: its
            return self.clones[key]               # life is the saved record's
        if entry is None:
            uid = self.next_uid
            self.next_uid += 1
            entry = self.live[key] = [uid, 0]
            self.storages[uid] = StorageRecord(
                uid, t.untyped_storage().nbytes(), kind,
                self.now() if kind != "input" else -1, None, producer, self.scope[-1])
        entry[1] += 1
        weakref.finalize(t, self._dead, key, entry[0])
        return entry[0]

    def _dead(self, key: int, uid: int) -> None:
        entry = self.live.get(key)
        if entry is None or entry[0] != uid:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del self.live[key]
            self.storages[uid].freed_at = max(self.now(), self.storages[uid].produced_at)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = str(func._overloadpacket)
        if self.suspended or name.startswith(_NO_DATA):
            return out
        if func.is_view or name in ("aten.detach", "aten.alias", "aten.lift_fresh"):
            io = 0  # a view: no data moves
        else:
            io = sum(t.numel() * t.element_size() for t in _tensors((args, kwargs, out)))
        self.ops.append(OpRecord(len(self.ops), self.phase, name,
                                 self.scope[-1] if self.phase == "fwd" else "",
                                 op_flops(func, args, kwargs, out), io,
                                 cpu_workspace(name, args), conv_key(name, args)))
        for t in _tensors(out):
            self.register(t, "act", name)
        return out


@contextlib.contextmanager
def _scope_hooks(model: nn.Module, rec: _Recorder, module_inputs: dict[str, list[int]],
                 module_ops: dict[str, tuple[int, int]]) -> Iterator[None]:
    handles = []

    def pre(name: str) -> Callable:
        def hook(mod: nn.Module, args: tuple) -> None:
            rec.scope.append(name)
            if name not in module_inputs:
                module_inputs[name] = [u for t in _tensors(args)
                                       if (u := rec.uid_of(t)) is not None]
                module_ops[name] = (len(rec.ops), -1)
        return hook

    def post(name: str) -> Callable:
        def hook(mod: nn.Module, args: tuple, out: Any) -> None:
            rec.scope.pop()
            first, last = module_ops[name]
            if last < 0:
                module_ops[name] = (first, rec.now())
        return hook

    for name, m in model.named_modules():
        if name:
            handles.append(m.register_forward_pre_hook(pre(name)))
            handles.append(m.register_forward_hook(post(name)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _saved_hooks(rec: _Recorder, params: set[int], saved: list[SavedRecord]) -> Any:
    def pack(t: torch.Tensor) -> Any:
        # as the swap engine: parameters, buffers and empty storages make no entry
        if rec.suspended or t.untyped_storage()._cdata in params \
                or t.untyped_storage().nbytes() == 0:
            return ("param", t)
        uid = rec.uid_of(t)
        if uid is None:  # saved before we saw it (e.g. a buffer): treat as a step input
            uid = rec.register(t, "input")
        rec.suspended = True
        try:
            clone = torch.empty_strided(t.size(), t.stride(), dtype=t.dtype, device=t.device)
        finally:
            rec.suspended = False
        rec_ = SavedRecord(len(saved), uid, rec.storages[uid].nbytes, rec.scope[-1], rec.now())
        saved.append(rec_)
        key = clone.untyped_storage()._cdata
        rec.clones[key] = uid
        weakref.finalize(clone, _released, rec, rec_, key)
        return ("act", clone, rec_)

    def unpack(packed: Any) -> torch.Tensor:
        if packed[0] == "param":
            return packed[1]
        packed[2].uses.append(len(rec.ops))  # the next op to run is the one using it
        return packed[1]

    return torch.autograd.graph.saved_tensors_hooks(pack, unpack)


def _released(rec: _Recorder, r: SavedRecord, key: int) -> None:
    r.released_at = rec.now()
    rec.clones.pop(key, None)


@contextlib.contextmanager
def _fake_parameters(model: nn.Module, fakes: dict[int, torch.Tensor]) -> Iterator[None]:
    """Every parameter and buffer of ``model`` replaced by its fake (``fakes``, by the
    real one's id) for forward *and* backward (a checkpoint inside the model reruns its
    forward there), and put back afterwards, tied ones included."""
    entries = [(m, kind, name, t) for m in model.modules()
               for kind in ("_parameters", "_buffers") for name, t in getattr(m, kind).items()
               if t is not None]
    try:
        for module, kind, name, t in entries:
            getattr(module, kind)[name] = fakes[id(t)]
        yield
    finally:
        for module, kind, name, t in entries:
            getattr(module, kind)[name] = t


def trace_step(model: nn.Module, input_shape: tuple[int, ...], loss_fn: LossFn | None = None,
               optimizer_states: int = 2, name: str | None = None,
               autocast_dtype: torch.dtype | None = None,
               target: Target | None = None) -> StepTrace:
    """Trace forward + backward of ``model`` on a fake input of ``input_shape``.

    ``loss_fn(output) -> scalar`` (default: the mean of squared outputs), or with
    ``target`` (``(shape, dtype)`` or a function of the output; see ``planner.loss``)
    ``loss_fn(output, target)``. Tensors the loss closes over (a real target) are taken
    as they are. A loss with data-dependent Python (``.item()``, ``.tolist()``) is
    measured once on real tensors at a small shape and traced as one op that saves as
    much (``planner.loss.surrogate_loss``). With ``autocast_dtype``, forward and loss run
    under ``torch.autocast`` at that dtype (as mixed-precision training runs them), so
    saved tensors count at their real dtype. ``optimizer_states`` is the number of
    parameter-sized state tensors of the optimizer (2 for Adam's two moments, 0 for
    plain SGD). The model itself is not modified.
    """
    loss = bind_target(loss_fn, target) or default_loss
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG stream untouched
        return _trace(model, tuple(input_shape), loss, optimizer_states, name,
                      autocast_dtype)


def _loss(loss_fn: LossFn, out: Any, rec: _Recorder) -> torch.Tensor:
    """``loss_fn(out)`` traced, or its stand-in when it needs real values: a dry run on
    detached outputs, unrecorded, tells which."""
    rec.suspended = True
    try:
        with torch.no_grad():
            loss_fn(_detached(out))
        traceable = True
    except (DataDependentOutputException, DynamicOutputShapeException):
        traceable = False
    finally:
        rec.suspended = False
    if traceable:
        return loss_fn(out)
    with real_tensors():
        saved = measure_loss_saved(loss_fn, out)
    return surrogate_loss(out, saved)


def _detached(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.detach()
    if isinstance(out, dict):
        return {k: _detached(v) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return type(out)(_detached(v) for v in out)
    return out


def _trace(model: nn.Module, input_shape: tuple[int, ...], loss_fn: LossFn,
           optimizer_states: int, name: str | None,
           autocast_dtype: torch.dtype | None) -> StepTrace:
    t0 = time.perf_counter()
    rec = _Recorder()
    saved: list[SavedRecord] = []
    module_inputs: dict[str, list[int]] = {}
    module_ops: dict[str, tuple[int, int]] = {}
    named = dict(model.named_parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in named.values())
    dtype = next(iter(named.values())).dtype if named else torch.get_default_dtype()
    # always trace on (fake) CPU tensors: a CUDA model's backward would run on the
    # autograd device thread, outside this thread's dispatch mode; CPU autocast casts
    # the same ops to the lower precision for conv and matmul. Real tensors the loss or
    # the model close over (a target, a constant) become fake on first use.
    with FakeTensorMode(allow_non_fake_inputs=True) as fm:
        fakes = {id(p): fm.from_tensor(p.detach().cpu()).requires_grad_(p.requires_grad)
                 for p in named.values()}
        fakes.update({id(b): fm.from_tensor(b.detach().cpu())
                      for b in model.buffers()})
        fparams = [fakes[id(p)] for p in named.values()]
        x = torch.empty(input_shape, dtype=dtype)
        param_keys = {p.untyped_storage()._cdata for p in fakes.values()}  # and buffers
        with rec, _scope_hooks(model, rec, module_inputs, module_ops), \
                _saved_hooks(rec, param_keys, saved), _fake_parameters(model, fakes):
            rec.register(x, "input")
            with autocast("cpu", autocast_dtype):
                out = model(x)
                loss = _loss(loss_fn, out, rec)
            n_fwd = len(rec.ops)
            rec.phase = "bwd"
            loss.backward()
            del out, loss
        grad_bytes = sum(p.grad.numel() * p.grad.element_size()
                         for p in fparams if p.grad is not None)
        for uid in [e[0] for e in rec.live.values()]:
            if rec.storages[uid].kind == "act" and rec.storages[uid].freed_at is None:
                rec.storages[uid].kind = "grad"
        del fparams, fakes, x
    return StepTrace(
        model=name or type(model).__name__, input_shape=tuple(input_shape), ops=rec.ops,
        storages=rec.storages, saved=saved, param_bytes=param_bytes, grad_bytes=grad_bytes,
        optimizer_bytes=optimizer_states * param_bytes, n_fwd_ops=n_fwd,
        module_inputs=module_inputs, module_ops=module_ops,
        trace_s=time.perf_counter() - t0, autocast_dtype=str(autocast_dtype or ""))
