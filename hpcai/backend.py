"""Array backends and memory: numpy on the host, cupy on a GPU, chosen from the data.

This is the only module that imports cupy. Its absence, or a machine where it imports but finds no
usable GPU, is a flag (``GPU_AVAILABLE``), not a crash; asking for a GPU that is not there raises
:class:`DeviceError`. :class:`MemoryManager` follows MagmaDNN's memory manager: host, device, and
mirrored storage (a host copy and a device copy, synchronised explicitly, with a dirty flag).
On the host, :func:`keep_host_memory` (applied at import) lets the C library recycle the large
temporaries every training step frees and allocates again.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import re
import sys

import numpy as np

try:  # cupy imports on machines without a driver; is_available() tells the truth.
    import cupy as _cupy

    GPU_AVAILABLE = bool(_cupy.cuda.is_available())
except Exception:  # ImportError, or a broken CUDA install
    _cupy = None
    GPU_AVAILABLE = False

__all__ = [
    "GPU_AVAILABLE", "Device", "DeviceError", "StaleMirrorError", "MemoryManager",
    "as_device", "device_of", "get_array_module", "is_array", "keep_host_memory", "to_device", "to_host",
    "synchronize",
]


class DeviceError(RuntimeError):
    """A device was asked for that this machine does not have, or arrays live on different devices."""


class StaleMirrorError(RuntimeError):
    """The side of a mirrored array being read is older than the other side; call ``sync()`` first."""


def _require_gpu(what: str):
    if not GPU_AVAILABLE:
        why = "cupy is not installed (pip install 'hpcai[gpu]')" if _cupy is None else \
            "cupy found no usable CUDA device"
        raise DeviceError(f"{what} needs a GPU, but {why}")
    return _cupy


@dataclasses.dataclass(frozen=True)
class Device:
    """Where arrays live: ``Device("cpu")`` or ``Device("cuda", 0)``; parse strings with :func:`as_device`."""

    kind: str = "cpu"
    index: int = 0

    @property
    def xp(self):
        """The array module for this device (numpy or cupy)."""
        return np if self.kind == "cpu" else _require_gpu(str(self))

    @contextlib.contextmanager
    def activate(self):
        """Make this the current CUDA device inside the block (a no-op for the CPU)."""
        if self.kind == "cpu":
            yield self
        else:
            with _require_gpu(str(self)).cuda.Device(self.index):
                yield self

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"


CPU = Device("cpu")
_DEVICE_RE = re.compile(r"^(cpu|cuda|gpu)(?::(\d+))?$")


def as_device(device) -> Device:
    """Parse ``"cpu"``, ``"cuda"``, ``"cuda:1"`` (or a :class:`Device`) and check that it exists."""
    if isinstance(device, Device):
        dev = device
    elif device is None:
        return CPU
    elif isinstance(device, str) and _DEVICE_RE.match(device.strip().lower()):
        kind, index = _DEVICE_RE.match(device.strip().lower()).groups()
        dev = CPU if kind == "cpu" else Device("cuda", int(index or 0))
    else:
        raise ValueError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if dev.kind == "cuda":
        cp = _require_gpu(f"device {dev}")
        count = cp.cuda.runtime.getDeviceCount()
        if not 0 <= dev.index < count:
            raise DeviceError(f"device {dev}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    return dev


def is_array(x) -> bool:
    """True for a numpy or cupy ndarray."""
    return isinstance(x, np.ndarray) or (_cupy is not None and isinstance(x, _cupy.ndarray))


def get_array_module(*arrays):
    """numpy, or cupy if any argument is a cupy array (chainer's rule: the data chooses)."""
    if _cupy is not None:
        for a in arrays:
            if isinstance(a, _cupy.ndarray):
                return _cupy
    return np


def device_of(array) -> Device:
    """The device an array lives on."""
    if _cupy is not None and isinstance(array, _cupy.ndarray):
        return Device("cuda", array.device.id)
    return CPU


def to_device(array, device):
    """Copy ``array`` to ``device`` (returned unchanged if it already lives there)."""
    dev = as_device(device)
    if device_of(array) == dev and is_array(array):
        return array
    if dev.kind == "cpu":
        return to_host(array)
    with dev.activate():
        return _cupy.asarray(array)


def to_host(array) -> np.ndarray:
    """A numpy copy of ``array`` (no copy if it already is a numpy array)."""
    if _cupy is not None and isinstance(array, _cupy.ndarray):
        return array.get()
    return np.asarray(array)


def synchronize(device=None) -> None:
    """Wait for queued GPU work (before MPI touches a buffer, or before timing); no-op on the CPU."""
    dev = as_device(device) if device is not None else None
    if GPU_AVAILABLE and (dev is None or dev.kind == "cuda"):
        with (dev or Device("cuda", 0)).activate():
            _cupy.cuda.get_current_stream().synchronize()


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_host_memory(largest=32 << 20, keep=1 << 30) -> bool:
    """Let glibc's malloc recycle freed arrays up to ``largest`` bytes instead of mapping fresh pages.

    By default glibc maps each large array afresh and unmaps it when freed, so every training step
    pays a page fault per 4 KiB of every activation and gradient it allocates (about 6,400 faults, 10-15%
    of a small CNN's step here). With this, arrays up to ``largest`` bytes come from the heap, and up to
    ``keep`` bytes of freed heap are kept for the next step instead of being returned to the system.
    Applied once when hpcai is imported unless ``HPCAI_SYSTEM_MALLOC=1``; returns whether it applied
    (glibc only; elsewhere a no-op). ``largest`` can be at most 32 MiB, glibc's own limit."""
    for name, value, most in (("largest", largest, 32 << 20), ("keep", keep, 2 ** 31 - 1)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
            raise ValueError(f"keep_host_memory: {name} must be a number of bytes from 0 to {most}, got {value!r}")
    if not sys.platform.startswith("linux"):
        return False
    try:  # the process's own symbols include the C library's (no library search at import)
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, int(largest)) and mallopt(_M_TRIM_THRESHOLD, int(keep)))


if os.environ.get("HPCAI_SYSTEM_MALLOC", "") not in ("1", "true", "yes"):
    keep_host_memory()


class MemoryManager:
    """Storage for one array in MagmaDNN's three kinds: ``"host"``, ``"device"`` or ``"mirrored"``.

    A mirrored array keeps a host copy and a device copy. Writes go through :meth:`write`, which marks
    the written side dirty; reading the other side before :meth:`sync` raises :class:`StaleMirrorError`
    instead of returning old data. On a machine without a GPU the device side of a mirror is a second
    host buffer, so the same code (and its tests) runs everywhere. Host buffers of a CUDA mirror are
    pinned, so transfers can run at full bus speed.
    """

    KINDS = ("host", "device", "mirrored")

    def __init__(self, shape, dtype=np.float32, kind="host", device="cpu"):
        if kind not in self.KINDS:
            raise ValueError(f"kind: expected one of {self.KINDS}, got {kind!r}")
        self.kind, self.device = kind, as_device(device)
        self.shape = (int(shape),) if np.isscalar(shape) else tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        if kind == "device" and self.device.kind == "cpu":
            raise DeviceError("kind='device' needs a CUDA device; use kind='host' or device='cuda:N'")
        self._host = self._alloc_host() if kind != "device" else None
        self._dev = self._alloc_device() if kind != "host" else None
        self._dirty = None  # "host" | "device" | None: the side holding newer data

    @classmethod
    def from_array(cls, array, kind="mirrored", device="cpu") -> "MemoryManager":
        """Storage of the given kind initialised with ``array`` (both sides, for a mirror)."""
        mem = cls(np.shape(array), array.dtype, kind, device)
        for buf in (mem._host, mem._dev):
            if buf is not None:
                buf[...] = to_host(array) if get_array_module(buf) is np else to_device(array, mem.device)
        return mem

    def _alloc_host(self):
        if self.kind == "mirrored" and self.device.kind == "cuda":
            import cupyx  # pinned memory lives in cupyx; cupy is known to import here
            return cupyx.empty_pinned(self.shape, self.dtype)
        return np.zeros(self.shape, self.dtype)

    def _alloc_device(self):
        with self.device.activate():
            return self.device.xp.zeros(self.shape, self.dtype)

    @property
    def nbytes(self) -> int:
        """Bytes held, counting both sides of a mirror."""
        per = int(np.prod(self.shape)) * self.dtype.itemsize
        return per * (2 if self.kind == "mirrored" else 1)

    @property
    def dirty(self):
        """Which side of a mirror holds newer data: ``"host"``, ``"device"`` or ``None`` (in sync)."""
        return self._dirty

    def _side(self, side):
        buf = self._host if side == "host" else self._dev
        if buf is None:
            raise DeviceError(f"{self.kind} storage has no {side} side")
        if self._dirty is not None and self._dirty != side:
            raise StaleMirrorError(f"the {side} copy is stale: the {self._dirty} copy was written; call sync()")
        return buf

    @property
    def host(self) -> np.ndarray:
        """The host array (read it freely; write through :meth:`write` on a mirror)."""
        return self._side("host")

    @property
    def device_array(self):
        """The device array (numpy on a CPU-only mirror, cupy otherwise)."""
        return self._side("device")

    @contextlib.contextmanager
    def write(self, side="host"):
        """Yield one side for writing and mark it dirty: ``with m.write("host") as a: a[:] = x``."""
        buf = self._side(side)
        yield buf
        if self.kind == "mirrored":
            self._dirty = side

    def sync(self) -> None:
        """Copy the dirty side over the other one; a no-op when already in sync or not mirrored."""
        if self._dirty == "host":
            with self.device.activate():
                if get_array_module(self._dev) is np:
                    self._dev[...] = self._host
                else:
                    self._dev.set(self._host)
        elif self._dirty == "device":
            if get_array_module(self._dev) is np:
                self._host[...] = self._dev
            else:
                self._dev.get(out=self._host)
        self._dirty = None

    def __repr__(self) -> str:
        return (f"MemoryManager(shape={self.shape}, dtype={self.dtype}, kind={self.kind!r}, "
                f"device='{self.device}', dirty={self._dirty!r})")


def special(xp):
    """scipy.special for numpy arrays, cupyx.scipy.special for cupy arrays (erf, gammaln, ...)."""
    if xp is np:
        import scipy.special
        return scipy.special
    import cupyx.scipy.special
    return cupyx.scipy.special


def scatter_add(target, index, values) -> None:
    """``target[index] += values`` with repeated indices summed (np.add.at; cupyx.scatter_add on GPUs)."""
    if get_array_module(target) is np:
        np.add.at(target, index, values)
    else:
        import cupyx
        cupyx.scatter_add(target, index, values)
