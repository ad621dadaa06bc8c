"""Function: one differentiable operation, forward and backward side by side, on raw arrays.

Subclasses write ``forward(self, *arrays)`` returning one array and ``backward(self, gy)`` returning
one gradient per input (``None`` where an input gets none). ``backward`` must not write into ``gy``: the
engine may hand that same array to other nodes and leaves. They keep what backward needs on ``self``;
``self.xp`` is numpy or cupy, chosen from the inputs. ``Function.apply`` wraps arrays in and out of
:class:`~hpcai.autograd.tensor.Tensor` and records the node only when a gradient is wanted.
"""
from __future__ import annotations

import threading
import weakref

import numpy as np

from .. import backend, precision
from .tensor import Tensor

_state = threading.local()  # grad mode is per thread: Hogwild workers must not switch each other's


def is_grad_enabled() -> bool:
    """Whether operations record the graph in this thread."""
    return getattr(_state, "enabled", True)


class no_grad:
    """Context manager (and decorator) that stops graph recording in this thread."""

    def __enter__(self):
        self._prev = is_grad_enabled()
        _state.enabled = False

    def __exit__(self, *exc):
        _state.enabled = self._prev

    def __call__(self, fn):
        def wrapper(*args, **kwargs):
            with no_grad():
                return fn(*args, **kwargs)
        return wrapper


def autocast_precision():
    """The reduced precision that tensor-core ops compute in on this thread (None: their own dtype)."""
    return getattr(_state, "autocast", None)


def set_autocast(precision):
    """Set this thread's autocast precision (a :class:`~hpcai.precision.Precision` or None); return the old one."""
    old = autocast_precision()
    _state.autocast = precision
    return old


class Function:
    """Base class of every op; see the module docstring.

    Ops with ``lowp = True`` (matrix products, convolutions) compute the way tensor cores do under
    autocast: float inputs are rounded to the autocast precision, products accumulate in fp32, and
    the output and the gradients they pass back are rounded to that precision again.
    """

    lowp = False
    autocast = None          # the precision this node ran in, when autocast rounded it
    inputs = ()              # the input Tensors (non-Tensor inputs are None), kept for backward
    needs_input_grad = ()
    output = None            # weakref to the output, for retain_grad()
    released = False

    def __init__(self, **params):
        self.__dict__.update(params)

    def forward(self, *arrays):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, gy):
        raise NotImplementedError(f"{type(self).__name__} has no backward")

    def release(self) -> None:
        """Drop the inputs and whatever forward saved, so the graph's memory is freed."""
        keep = {k: self.__dict__[k] for k in ("needs_input_grad", "output", "autocast") if k in self.__dict__}
        self.__dict__.clear()
        self.__dict__.update(keep, released=True)

    @classmethod
    def apply(cls, *inputs, **params):
        """Run forward on the inputs' arrays; return a Tensor that remembers this node if needed."""
        arrays = [x.data if isinstance(x, Tensor) else x for x in inputs]
        fn = cls(**params)
        if backend._cupy is None:  # the common CPU-only case costs nothing more
            fn.xp = np
        else:
            _check_same_device(cls.__name__, arrays)
            fn.xp = backend.get_array_module(*arrays)
        prec = autocast_precision() if cls.lowp else None
        if prec is not None:
            arrays = [_round(a, prec) for a in arrays]
            out = _round(fn.forward(*arrays), prec)
            fn.autocast = prec
        else:
            out = fn.forward(*arrays)
        needs = tuple(isinstance(x, Tensor) and x.requires_grad for x in inputs)
        if not (is_grad_enabled() and any(needs)):
            return Tensor(out)
        fn.inputs = tuple(x if isinstance(x, Tensor) else None for x in inputs)
        fn.needs_input_grad = needs
        result = Tensor(out, requires_grad=True, _ctx=fn)
        fn.output = weakref.ref(result)
        return result


def _round(a, prec):
    """``a`` rounded to ``prec`` if it is a floating-point array (other arguments pass through)."""
    return precision.round_to(a, prec) if backend.is_array(a) and a.dtype.kind == "f" else a


def _check_same_device(op: str, arrays) -> None:
    devices = {str(backend.device_of(a)) for a in arrays if backend.is_array(a)}
    if len(devices) > 1:
        raise backend.DeviceError(f"{op}: inputs live on different devices ({', '.join(sorted(devices))}); "
                                  "move them to one device with .to(device)")
