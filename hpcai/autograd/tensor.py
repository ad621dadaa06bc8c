"""Tensor: an array (numpy or cupy) plus what autodiff needs: requires_grad, grad, and its creator.

Arithmetic operators and methods such as ``sum`` are attached by :mod:`hpcai.ops` (which sits above
this module), so that every operation is defined once, as a registered op.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from . import engine

DEFAULT_FLOAT = np.float32  # Python floats and lists become float32, as in PyTorch


class Tensor:
    """An n-dimensional array on a device, recording operations for reverse-mode autodiff.

    ``grad`` is a raw array of the same shape, dtype and device, filled by :meth:`backward`.
    Arrays keep their dtype; Python scalars and lists of floats become float32.
    """

    __array_priority__ = 1000  # numpy_array * tensor calls Tensor.__rmul__, not numpy's broadcasting loop

    def __init__(self, data, requires_grad: bool = False, dtype=None, device=None, _ctx=None):
        if isinstance(data, Tensor):
            data = data.data
        if not backend.is_array(data):
            python_data = not isinstance(data, np.generic)  # numpy scalars (0-d results) keep their dtype
            data = np.asarray(data)
            if dtype is None and python_data and data.dtype.kind == "f":
                data = data.astype(DEFAULT_FLOAT)
        if dtype is not None:
            data = data.astype(dtype, copy=False)
        if device is not None:
            data = backend.to_device(data, device)
        if data.dtype.kind not in "biuf":  # complex, object, str: no op here is defined on them
            raise TypeError(f"data: expected bool, integer or floating-point values, got dtype {data.dtype}")
        if requires_grad and data.dtype.kind != "f":
            raise TypeError(f"requires_grad: only floating-point tensors can require grad, got dtype {data.dtype}")
        self.data = data
        self.requires_grad = bool(requires_grad)
        self.grad = None
        self._ctx = _ctx
        self._retain_grad = False

    # -- array facts -------------------------------------------------------------------------------
    shape = property(lambda self: self.data.shape)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)
    dtype = property(lambda self: self.data.dtype)
    xp = property(lambda self: backend.get_array_module(self.data), doc="numpy or cupy")
    device = property(lambda self: backend.device_of(self.data))
    is_leaf = property(lambda self: self._ctx is None)

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        dev = "" if self.device.kind == "cpu" else f", device='{self.device}'"
        return f"Tensor({np.array2string(backend.to_host(self.data), separator=', ')}{grad}{dev})"

    # -- moving and detaching ----------------------------------------------------------------------
    def numpy(self) -> np.ndarray:
        """The values as a host numpy array (copied from the GPU if needed), outside the graph."""
        return backend.to_host(self.data)

    def item(self):
        """The value of a one-element tensor as a Python number."""
        if self.size != 1:
            raise ValueError(f"item: only one-element tensors convert to a number, got shape {self.shape}")
        return self.data.reshape(()).item()

    def detach(self) -> "Tensor":
        """The same data, cut from the graph."""
        return Tensor(self.data)

    def to(self, device) -> "Tensor":
        """A copy on ``device`` ("cpu", "cuda:0", ...); the copy is a new leaf."""
        return Tensor(backend.to_device(self.data, device), requires_grad=self.requires_grad)

    def cpu(self) -> "Tensor":
        return self.to("cpu")

    def cuda(self, index: int = 0) -> "Tensor":
        return self.to(f"cuda:{index}")

    def astype(self, dtype) -> "Tensor":
        """A new leaf with data cast to ``dtype`` (use :func:`hpcai.ops.cast` to stay in the graph)."""
        return Tensor(self.data.astype(dtype), requires_grad=self.requires_grad)

    # -- autodiff ----------------------------------------------------------------------------------
    def backward(self, grad=None, retain_graph: bool = False) -> None:
        """Accumulate gradients of this tensor into the ``grad`` of every leaf it depends on."""
        engine.backward(self, grad, retain_graph)

    def retain_grad(self) -> "Tensor":
        """Keep ``grad`` on this intermediate tensor too (leaves always get one)."""
        self._retain_grad = True
        return self

    def zero_grad(self) -> None:
        self.grad = None

    def requires_grad_(self, flag: bool = True) -> "Tensor":
        if flag and self.dtype.kind != "f":
            raise TypeError(f"requires_grad: only floating-point tensors can require grad, got dtype {self.dtype}")
        self.requires_grad = bool(flag)
        return self


def as_tensor(x, like: Tensor | None = None) -> Tensor:
    """``x`` as a Tensor (no copy if it is one), on ``like``'s device when given."""
    if isinstance(x, Tensor):
        return x
    if like is not None and not backend.is_array(x):
        return Tensor(like.xp.asarray(x, dtype=like.dtype if np.ndim(x) == 0 else None))
    return Tensor(x)
