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
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from swapseg.offload.measure import autocast, default_loss

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
    cpu_workspace_bytes: int = 0  # im2col buffer if a CPU would run the native conv path
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


def _flops(func: Any, args: tuple, kwargs: dict, out: Any) -> float:
    fn = flop_registry.get(func._overloadpacket)
    if fn is None:
        return 0.0
    return float(fn(*args, **kwargs, out_val=out))


def _cpu_conv_workspace(name: str, args: tuple) -> int:
    """Column buffer of PyTorch's native (non-oneDNN) 3D conv, when a CPU would pick it.

    ATen's ``ConvParams::use_mkldnn`` takes oneDNN for a float CPU conv when batch > 1,
    or kernels > 3, or B*C*D*H > 20480; otherwise ``slow_conv3d`` unfolds the input into
    C_in * prod(kernel) * out_voxels floats, in forward and again in backward.
    """
    if name == "aten.convolution":
        x, w = args[0], args[1]
    elif name == "aten.convolution_backward":
        x, w = args[1], args[2]
    else:
        return 0
    if x.dim() != 5 or x.shape[0] > 1 or max(w.shape[2:]) > 3 or w.shape[1] != x.shape[1]:
        return 0  # batched, grouped or large kernels: oneDNN
    if x.shape[0] * x.shape[1] * x.shape[2] * x.shape[3] > 20480:
        return 0
    if name == "aten.convolution_backward":
        out_vox = args[0].shape[2:].numel()  # grad_output's voxels
    else:  # forward: output voxels from input size and stride (padding keeps "same")
        out_vox = 1
        for d, s in zip(x.shape[2:], args[3], strict=True):
            out_vox *= -(-d // s)
    return int(x.shape[1] * w.shape[2:].numel() * out_vox * x.element_size())


def _conv_key(name: str, args: tuple) -> str:
    if name == "aten.convolution":
        x, w, stride = args[0], args[1], args[3]
    elif name == "aten.convolution_backward":
        x, w, stride = args[1], args[2], args[4]
    else:
        return ""
    if x.dim() < 3:
        return ""
    return ",".join(str(int(v)) for v in (x.shape[1], w.shape[0], w.shape[2], stride[0],
                                          *x.shape[2:]))


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

    def now(self) -> int:
        return len(self.ops) - 1

    def uid_of(self, t: torch.Tensor) -> int | None:
        entry = self.live.get(t.untyped_storage()._cdata)
        return entry[0] if entry else None

    def register(self, t: torch.Tensor, kind: str, producer: str = "") -> int:
        key = t.untyped_storage()._cdata
        entry = self.live.get(key)
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

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
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
                                 _flops(func, args, kwargs, out), io,
                                 _cpu_conv_workspace(name, args), _conv_key(name, args)))
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
        if t.untyped_storage()._cdata in params or t.untyped_storage().nbytes() == 0:
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
        weakref.finalize(clone, _released, rec, rec_)
        return ("act", clone, rec_)

    def unpack(packed: Any) -> torch.Tensor:
        if packed[0] == "param":
            return packed[1]
        packed[2].uses.append(len(rec.ops))  # the next op to run is the one using it
        return packed[1]

    return torch.autograd.graph.saved_tensors_hooks(pack, unpack)


def _released(rec: _Recorder, r: SavedRecord) -> None:
    r.released_at = rec.now()


@contextlib.contextmanager
def _parameters_kept(model: nn.Module) -> Iterator[None]:
    """Put back every parameter and buffer of ``model`` afterwards.

    ``functional_call`` restores the originals itself, except in a module reachable under
    two names (a decoder that holds its encoder): there it saves the second name's
    original after the first name already replaced it, and leaves fake tensors behind.
    """
    entries = [(m, kind, name, t) for m in model.modules()
               for kind in ("_parameters", "_buffers") for name, t in getattr(m, kind).items()]
    try:
        yield
    finally:
        for module, kind, name, t in entries:
            getattr(module, kind)[name] = t


def trace_step(model: nn.Module, input_shape: tuple[int, ...], loss_fn: LossFn | None = None,
               optimizer_states: int = 2, name: str | None = None,
               autocast_dtype: torch.dtype | None = None) -> StepTrace:
    """Trace forward + backward of ``model`` on a fake input of ``input_shape``.

    ``loss_fn(output) -> scalar`` (default: the mean of squared outputs). With
    ``autocast_dtype``, forward and loss run under ``torch.autocast`` at that dtype (as
    mixed-precision training runs them), so saved tensors count at their real dtype.
    ``optimizer_states`` is the number of parameter-sized state tensors of the optimizer
    (2 for Adam's two moments, 0 for plain SGD). The model itself is not modified.
    """
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG stream untouched
        return _trace(model, tuple(input_shape), loss_fn or default_loss, optimizer_states,
                      name, autocast_dtype)


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
    # the same ops to the lower precision for conv and matmul
    real_params = {n: p.detach().cpu() for n, p in named.items()}
    real_buffers = {n: b.detach().cpu() for n, b in model.named_buffers()}
    with FakeTensorMode(allow_non_fake_inputs=False) as fm:
        fparams = {n: fm.from_tensor(p).requires_grad_(named[n].requires_grad)
                   for n, p in real_params.items()}
        fbuffers = {n: fm.from_tensor(b) for n, b in real_buffers.items()}
        x = torch.empty(input_shape, dtype=dtype)
        param_keys = {p.untyped_storage()._cdata for p in [*fparams.values(),
                                                            *fbuffers.values()]}
        with rec, _scope_hooks(model, rec, module_inputs, module_ops), \
                _saved_hooks(rec, param_keys, saved):
            rec.register(x, "input")
            with autocast("cpu", autocast_dtype), _parameters_kept(model):
                out = functional_call(model, {**fparams, **fbuffers}, (x,))
                loss = loss_fn(out)
            n_fwd = len(rec.ops)
            rec.phase = "bwd"
            loss.backward()
            del out, loss
        grad_bytes = sum(p.grad.numel() * p.grad.element_size()
                         for p in fparams.values() if p.grad is not None)
        for uid in [e[0] for e in rec.live.values()]:
            if rec.storages[uid].kind == "act" and rec.storages[uid].freed_at is None:
                rec.storages[uid].kind = "grad"
        del fparams, fbuffers, x
    return StepTrace(
        model=name or type(model).__name__, input_shape=tuple(input_shape), ops=rec.ops,
        storages=rec.storages, saved=saved, param_bytes=param_bytes, grad_bytes=grad_bytes,
        optimizer_bytes=optimizer_states * param_bytes, n_fwd_ops=n_fwd,
        module_inputs=module_inputs, module_ops=module_ops,
        trace_s=time.perf_counter() - t0, autocast_dtype=str(autocast_dtype or ""))
