"""SyncProbe: records the aten ops that make the host wait for a CUDA device, so that a CPU test can prove a training
step queues its work without ever reading the device back.

On CUDA, the host queues kernels and runs ahead of the device; anything that needs a value computed on the device
(a Python number, a data-dependent shape, an error code) blocks the host until the queue has drained, and the device
then idles while Python queues the next kernels. torch.cuda.set_sync_debug_mode("error") catches those waits on a
GPU; this probe catches the ops that cause them on the CPU, where the same code runs without a device to wait for.

Every op below waits for the device on CUDA (torch 2.x; "host" is the CPU thread running Python):

  _local_scalar_dense   Tensor.item(), int()/float()/bool() of a tensor, tolist(), `if tensor:` (is_nonzero and
                        most Python-number conversions reach the kernels as this op): copies one value to the host.
  is_nonzero            bool(tensor) (implicit autograd op; listed in case it reaches the mode undecomposed).
  equal, allclose       return a Python bool computed on the device.
  nonzero               the output's length is the number of nonzeros, read on the host (nonzero_static is not).
  masked_select         the output's length is the mask's count, read on the host.
  bincount              the CUDA kernel reads max(input) (and min) on the host to size the output, even with minlength.
  histc                 with min == max (the default) the CUDA kernel reads the input's range on the host.
  unique*, _unique*     the output's length is the number of distinct values.
  repeat_interleave     without output_size, the output's length is repeats.sum(), read on the host.
  index.Tensor,         a bool (or uint8) mask among the indices is turned into positions by nonzero (above).
  index_put*, _index_put_impl_
  linalg_cholesky_ex,   with check_errors=True they read the LAPACK/cuSOLVER/MAGMA info codes on the host and raise.
  linalg_inv_ex, linalg_solve_ex, linalg_lu_factor_ex, linalg_ldl_factor_ex
  _linalg_check_errors  the host-side check behind linalg.cholesky, linalg.inv, linalg.solve, linalg.eigh, ...:
                        the non-_ex functions reach the mode as <op>_ex/_<op> followed by this op.
  linalg_cholesky, linalg_inv, linalg_eigh, _linalg_eigh, linalg_eigvalsh, linalg_solve, _linalg_solve_ex
                        as above (listed for torch versions that dispatch them whole); _linalg_eigh: cuSOLVER's
                        syevd/syevj info codes are checked on the host.
  linalg_eig, linalg_eigvals
                        computed by MAGMA on the host: the matrix is copied to the CPU.
  cholesky_inverse, cholesky_solve
                        the CUDA kernels (MAGMA potri/potrs, or cuSOLVER) copy their info codes to the host to
                        check them (singleCheckErrors / batchCheckErrors).
  _to_copy, copy_       a copy between the CPU and a CUDA device: device-to-host always waits for the stream, and
                        a blocking host-to-device copy of pageable memory synchronises the stream too
                        (at::cuda::memcpy_and_sync). Only visible when one side is not on the CPU.
  lift_fresh            a tensor made from Python data (torch.tensor, as_tensor of a list) on a CUDA device is a
                        blocking host-to-device copy (above); recorded when the tensor is not on the CPU.
  Tensor.tolist, .numpy, .cpu, __array__
                        read a tensor's data on the host without passing the dispatcher when it is already on the CPU,
                        so the probe wraps these methods while active: in simulate mode (below) any call counts,
                        since on CUDA each is a device-to-host copy.

`SyncProbe(simulate=True)` (the default, for CPU runs) records these ops whatever their tensors' device, since the
same code on CUDA would run them on device tensors, except a read whose calling line also tests that the tensor is
on the CPU (`if factor.device.type == "cpu" and not bool(failed.any()):`, a branch CUDA never takes), which goes to
`cpu_only_events` instead; `simulate=False` (for CUDA runs) records only ops that touch a
non-CPU tensor, so host-side bookkeeping on CPU tensors (e.g. Adam's step counters) is not counted.

Usage:

    probe = SyncProbe()
    with probe:
        loss = model_loss(...)
        with probe.paused():       # work that is not ours, e.g. the optimizer's step
            optimizer.step()
    assert not probe.events, probe.report()

`probe.pause_during_optimizer_steps()` (a context manager) pauses the probe inside every optimizer's step(), through
torch.optim's global step hooks.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

aten = torch.ops.aten

# Packets (all overloads) that wait for the device whatever their arguments.
ALWAYS = {
    "_local_scalar_dense": "reads a device value into a Python number (item/int/float/bool/tolist/`if tensor`)",
    "is_nonzero": "bool(tensor): reads a device value",
    "equal": "returns a Python bool computed on the device",
    "allclose": "returns a Python bool computed on the device",
    "nonzero": "output length = number of nonzeros, read on the host",
    "masked_select": "output length = mask count, read on the host",
    "bincount": "CUDA bincount reads the input's max/min on the host to size its output",
    "unique": "output length = number of distinct values",
    "_unique": "output length = number of distinct values",
    "_unique2": "output length = number of distinct values",
    "unique_dim": "output length = number of distinct values",
    "unique_consecutive": "output length = number of runs",
    "unique_dim_consecutive": "output length = number of runs",
    "_linalg_check_errors": "reads LAPACK/cuSOLVER info codes on the host (linalg.cholesky, inv, solve, eigh, ...)",
    "linalg_cholesky": "checks the factorisation's info code on the host (use linalg_cholesky_ex)",
    "cholesky": "checks the factorisation's info code on the host",
    "linalg_inv": "checks the info code on the host (use linalg_inv_ex)",
    "inverse": "linalg_inv: checks the info code on the host",
    "linalg_solve": "checks the info code on the host",
    "_linalg_solve_ex": "linalg.solve's factorisation; followed by a host check unless called as solve_ex",
    "linalg_eigh": "cuSOLVER syevd info codes checked on the host",
    "_linalg_eigh": "cuSOLVER syevd info codes checked on the host",
    "linalg_eigvalsh": "cuSOLVER syevd info codes checked on the host",
    "linalg_eig": "computed by MAGMA on the host: the matrix goes to the CPU",
    "linalg_eigvals": "computed by MAGMA on the host: the matrix goes to the CPU",
    "cholesky_inverse": "the CUDA kernel checks its info codes on the host",
    "cholesky_solve": "the CUDA kernel checks its info codes on the host",
    "_cholesky_solve_helper": "the CUDA kernel checks its info codes on the host",
}
# Packets that wait only with some arguments.
CHECK_ERRORS = {"linalg_cholesky_ex", "linalg_inv_ex", "linalg_solve_ex", "linalg_lu_factor_ex", "linalg_ldl_factor_ex"}
INDEXING = {"index", "index_put", "index_put_", "_index_put_impl", "_index_put_impl_", "_unsafe_index_put"}
# simulate mode: a read on a line that also tests for the CPU (`if x.device.type == "cpu" and bool(...)`) runs only
# on the CPU, so it is no wait on CUDA: kept apart in cpu_only_events (the CUDA test checks the real device).
CPU_ONLY_GUARDS = ('device.type == "cpu"', "device.type == 'cpu'")
HOST_READS = ("tolist", "numpy", "cpu", "__array__")
COPIES = {"_to_copy", "copy_", "copy", "to", "_copy_from", "_copy_from_and_resize"}


@dataclass(frozen=True)
class SyncEvent:
    """One op that would make the host wait for the device, and where the Python code called it."""

    op: str
    reason: str
    stack: tuple[str, ...] = field(default=(), compare=False)

    def __str__(self) -> str:
        return f"{self.op}: {self.reason}\n" + "".join(f"    {line}\n" for line in self.stack)


def _tensors(args, kwargs) -> list[torch.Tensor]:
    flat, _ = tree_flatten((args, kwargs))
    return [value for value in flat if isinstance(value, torch.Tensor)]


def _bool_index(indices) -> bool:
    return any(isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8) for index in indices or ())


def _argument(args, kwargs, position: int, name: str, default=None):
    if name in kwargs:
        return kwargs[name]
    return args[position] if len(args) > position else default


HIDDEN_FRAMES = ("/torch/", "site-packages/", "<frozen", "sync_probe.py")


def _project_stack(limit: int = 12) -> tuple[str, ...]:
    """The calling Python frames, innermost last, without this module's and torch's internals."""
    frames = [
        frame
        for frame in traceback.extract_stack()
        if not any(part in frame.filename.replace("\\", "/") for part in HIDDEN_FRAMES)
    ]
    return tuple(f"{frame.filename}:{frame.lineno} in {frame.name}: {frame.line}" for frame in frames[-limit:])


def waiting_reason(func, args, kwargs, out, simulate: bool) -> str | None:
    """Why `func(*args, **kwargs)` (result `out`) waits for the device, or None."""
    packet = func.overloadpacket.__name__
    tensors = _tensors(args, kwargs)
    on_device = any(tensor.device.type != "cpu" for tensor in tensors)
    if not (simulate or on_device or packet in COPIES or packet == "lift_fresh"):
        return None
    if packet in ALWAYS:
        return ALWAYS[packet]
    if packet in CHECK_ERRORS and _argument(args, kwargs, 99, "check_errors", False):
        return "check_errors=True reads the info codes on the host"
    if packet in INDEXING and _bool_index(_argument(args, kwargs, 1, "indices")):
        return "a bool mask index becomes positions through nonzero (host reads the count)"
    if packet == "repeat_interleave" and _argument(args, kwargs, 99, "output_size") is None:
        return "without output_size, the output length repeats.sum() is read on the host"
    if packet == "histc":
        low, high = _argument(args, kwargs, 2, "min", 0), _argument(args, kwargs, 3, "max", 0)
        if low == high:
            return "histc with min == max reads the input's range on the host"
    if packet in COPIES:
        devices = {tensor.device.type for tensor in tensors}
        if isinstance(out, torch.Tensor):
            devices.add(out.device.type)
        if "cpu" in devices and len(devices) > 1:
            return "a copy between the host and the device (blocking)"
    if packet == "lift_fresh" and isinstance(out, torch.Tensor) and out.device.type != "cpu":
        return "a tensor made from Python data on the device: a blocking host-to-device copy"
    return None


class SyncProbe(TorchDispatchMode):
    """Records (self.events) every op that makes the host wait for a CUDA device; see the module docstring.

    simulate: count the ops whatever the device (True, for CPU runs standing in for CUDA ones), or only when a
    tensor they touch is on a non-CPU device (False)."""

    def __init__(self, simulate: bool = True, stack_limit: int = 12):
        super().__init__()
        self.simulate = simulate
        self.stack_limit = stack_limit
        self.events: list[SyncEvent] = []
        self.cpu_only_events: list[SyncEvent] = []  # simulate mode: reads in a branch taken only on the CPU
        self._paused = 0
        self.ops_seen = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self._paused:
            self.ops_seen += 1
            reason = waiting_reason(func, args, kwargs, out, self.simulate)
            if reason is not None:
                self._add(SyncEvent(str(func), reason, _project_stack(self.stack_limit)))
        return out

    def _add(self, event: SyncEvent) -> None:
        if self.simulate and event.stack and any(guard in event.stack[-1] for guard in CPU_ONLY_GUARDS):
            self.cpu_only_events.append(event)
        else:
            self.events.append(event)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Record nothing inside the block (work that is not under test, e.g. the optimizer's step)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    @contextmanager
    def pause_during_optimizer_steps(self) -> Iterator[None]:
        """Inside the block, every torch.optim optimizer's step() runs with the probe paused (Adam keeps its step
        counter on the host; the optimizers are torch's, not the code under test)."""

        def pause(optimizer, args, kwargs):
            self._paused += 1

        def resume(optimizer, args, kwargs):
            self._paused -= 1

        handles = [
            register_optimizer_step_pre_hook(pause),
            register_optimizer_step_post_hook(resume),
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def __enter__(self):
        self._saved_methods = {name: getattr(torch.Tensor, name) for name in HOST_READS}
        for name, method in self._saved_methods.items():
            setattr(torch.Tensor, name, self._host_read(name, method))
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            for name, method in self._saved_methods.items():
                setattr(torch.Tensor, name, method)

    def _host_read(self, name: str, method):
        probe = self

        def read(tensor, *args, **kwargs):
            if not probe._paused and (probe.simulate or tensor.device.type != "cpu"):
                reason = f"Tensor.{name}: reads the tensor's data on the host (a device-to-host copy on CUDA)"
                probe._add(SyncEvent(f"Tensor.{name}", reason, _project_stack(probe.stack_limit)))
            return method(tensor, *args, **kwargs)

        return read

    def ops(self) -> list[str]:
        """The distinct offending ops, in first-seen order."""
        return list(dict.fromkeys(event.op for event in self.events))

    def report(self, limit: int = 20) -> str:
        """The distinct (op, innermost stack) events with their stacks, for an assertion message."""
        distinct = list(dict.fromkeys((event.op, event.reason, event.stack) for event in self.events))
        lines = [f"{len(self.events)} op(s) that wait for the device ({len(distinct)} distinct):"]
        for op, reason, stack in distinct[:limit]:
            lines.append(str(SyncEvent(op, reason, stack)))
        return "\n".join(lines)
