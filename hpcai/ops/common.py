"""Helpers shared by the ops: undoing broadcasting, normalising axes, checking arguments."""
from __future__ import annotations

from ..autograd.tensor import Tensor


def unbroadcast(g, shape):
    """Sum ``g`` down to ``shape``, undoing numpy broadcasting (leading axes and size-1 axes)."""
    if g.shape == tuple(shape):
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(i + lead for i, n in enumerate(shape) if n == 1 and g.shape[i + lead] != 1)
    return g.sum(axis=axes, keepdims=True).reshape(shape)


def norm_axes(axis, ndim: int, name: str = "axis"):
    """``axis`` (None, int or tuple) as a sorted tuple of non-negative axes; a clear error if out of range."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for a in axes:
        if not isinstance(a, int) or not -ndim <= a < max(ndim, 1):
            raise ValueError(f"{name}: expected integers in [-{ndim}, {ndim}), got {axis!r} for a {ndim}-d tensor")
        out.append(a % max(ndim, 1))
    if len(set(out)) != len(out):
        raise ValueError(f"{name}: repeated axis in {axis!r}")
    return tuple(sorted(out))


def expect_tensor(x, name: str, op: str) -> Tensor:
    """``x`` as a Tensor, or a TypeError naming the argument."""
    if isinstance(x, Tensor):
        return x
    raise TypeError(f"{op}: {name} must be a Tensor, got {type(x).__name__}")


def expect_ndim(x, ndim: int, name: str, op: str, layout: str = "") -> None:
    """A ValueError naming the argument unless ``x`` has ``ndim`` dimensions."""
    if x.ndim != ndim:
        what = f" ({layout})" if layout else ""
        raise ValueError(f"{op}: {name} must be {ndim}-d{what}, got shape {tuple(x.shape)}")


def expect_float(x, name: str, op: str) -> None:
    """A TypeError naming the argument unless ``x`` holds floating-point values."""
    if x.dtype.kind != "f":
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got dtype {x.dtype}")
