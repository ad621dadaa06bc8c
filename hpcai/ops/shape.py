"""Ops that move elements without arithmetic: reshape, transpose, concatenate, stack, indexing, gather, pad."""
from __future__ import annotations

import numpy as np

from .. import backend
from ..autograd.function import Function
from ..autograd.tensor import Tensor
from .common import norm_axes
from .registry import Const, Sample, register


class Reshape(Function):
    def forward(self, x):
        self.in_shape = x.shape
        return x.reshape(self.shape)

    def backward(self, gy):
        return gy.reshape(self.in_shape)


class Transpose(Function):
    def forward(self, x):
        return x.transpose(self.axes)

    def backward(self, gy):
        return gy.transpose(np.argsort(self.axes))


class Concatenate(Function):
    def forward(self, *xs):
        self.bounds = np.cumsum([x.shape[self.axis] for x in xs])[:-1]
        return self.xp.concatenate(xs, axis=self.axis)

    def backward(self, gy):
        return tuple(self.xp.split(gy, self.bounds, axis=self.axis))


class Stack(Function):
    def forward(self, *xs):
        return self.xp.stack(xs, axis=self.axis)

    def backward(self, gy):
        return tuple(self.xp.moveaxis(gy, self.axis, 0))


class GetItem(Function):
    def forward(self, x):
        self.in_shape, self.dtype = x.shape, x.dtype
        return x[self.index]

    def backward(self, gy):
        g = self.xp.zeros(self.in_shape, self.dtype)
        if self.advanced:
            backend.scatter_add(g, self.index, gy)  # repeated indices accumulate
        else:
            g[self.index] = gy
        return g


class Gather(Function):
    def forward(self, x, index):
        self.in_shape, self.index = x.shape, index
        # off the gathered axis, index may be shorter than x: it reads x's leading block there
        block = tuple(slice(None) if d == self.axis else slice(0, n) for d, n in enumerate(index.shape))
        return self.xp.take_along_axis(x[block], index, axis=self.axis)

    def backward(self, gy):
        xp = self.xp
        g = xp.zeros(self.in_shape, gy.dtype)
        # scatter-add gy back: index arrays for every axis, with the gathered axis replaced by `index`
        grid = list(xp.indices(self.index.shape, sparse=True))
        grid[self.axis] = self.index
        backend.scatter_add(g, tuple(grid), gy)
        return g, None


class Pad(Function):
    """Pad with a constant, or with values taken from inside (``circular``/``reflect``/``edge``).

    The adjoint of a non-constant pad adds each padded slab back onto the source slab it was copied
    from; axes are padded (and unpadded) one at a time, so the loops are over pad widths only.
    """

    def forward(self, x):
        self.in_shape = x.shape
        if self.mode == "constant":
            return self.xp.pad(x, self.widths, mode="constant", constant_values=self.value)
        return self.xp.pad(x, self.widths, mode=_NUMPY_MODES[self.mode])

    def backward(self, gy):
        for axis, (lo, hi) in enumerate(self.widths):
            n = self.in_shape[axis]
            core = _take(gy, axis, slice(lo, lo + n)).copy()
            if self.mode != "constant" and (lo or hi):
                source = np.pad(np.arange(n), (lo, hi), mode=_NUMPY_MODES[self.mode])
                for pos in [*range(lo), *range(lo + n, lo + n + hi)]:
                    _take(core, axis, slice(source[pos], source[pos] + 1))[...] += _take(gy, axis, slice(pos, pos + 1))
            gy = core
        return gy


_NUMPY_MODES = {"circular": "wrap", "reflect": "reflect", "edge": "edge", "symmetric": "symmetric"}


def _take(a, axis, sl):
    return a[(slice(None),) * axis + (sl,)]


# -- public wrappers ---------------------------------------------------------------------------------
@register("reshape", lambda rng: [Sample((rng.standard_normal((3, 4)),), {"shape": (2, 6)}),
                                  Sample((rng.standard_normal((2, 3, 4)),), {"shape": (-1, 4)})],
          torch=lambda x, shape: x.reshape(shape))
def reshape(x, shape):
    """The same elements in a new shape (one axis may be -1)."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    try:
        np.empty(x.shape, dtype=np.bool_).reshape(shape)  # validates without touching the data
    except ValueError:
        raise ValueError(f"reshape: cannot reshape a tensor of shape {x.shape} ({x.size} elements) "
                         f"into shape {shape}") from None
    return Reshape.apply(x, shape=shape)


@register("transpose", lambda rng: [Sample((rng.standard_normal((3, 4)),)),
                                    Sample((rng.standard_normal((2, 3, 4)),), {"axes": (1, 2, 0)})],
          torch=lambda x, axes=None: x.permute(*(axes or range(x.ndim)[::-1])))
def transpose(x, axes=None):
    """Permute axes (default: reverse them, as numpy does)."""
    axes = tuple(range(x.ndim))[::-1] if axes is None else tuple(axes)
    if sorted(a % max(x.ndim, 1) for a in axes) != list(range(x.ndim)):
        raise ValueError(f"transpose: axes must be a permutation of 0..{x.ndim - 1}, got {axes}")
    return Transpose.apply(x, axes=tuple(a % x.ndim for a in axes))


def swapaxes(x, a: int, b: int):
    """Exchange two axes."""
    axes = list(range(x.ndim))
    a, b = norm_axes(a, x.ndim)[0], norm_axes(b, x.ndim)[0]
    axes[a], axes[b] = axes[b], axes[a]
    return transpose(x, axes)


def _check_joinable(op, xs, axis, same_axis):
    if not xs:
        raise ValueError(f"{op}: tensors must be a non-empty sequence")
    ref = xs[0].shape
    for i, x in enumerate(xs):
        a, b = list(x.shape), list(ref)
        if not same_axis and len(a) == len(b):
            a[axis] = b[axis] = 0
        if a != b:
            raise ValueError(f"{op}: tensors[{i}] has shape {tuple(x.shape)}, incompatible with tensors[0]'s "
                             f"{tuple(ref)} along axis {axis}")


@register("concatenate", lambda rng: [Sample((rng.standard_normal((2, 3)), rng.standard_normal((4, 3)))),
                                      Sample((rng.standard_normal((2, 3)), rng.standard_normal((2, 1)),
                                              rng.standard_normal((2, 2))), {"axis": 1})],
          torch=lambda *xs, axis=0: __import__("torch").cat(xs, dim=axis))
def concatenate(*tensors, axis: int = 0):
    """Join tensors along an existing axis (``concatenate(a, b)`` or ``concatenate(*list)``)."""
    axis = norm_axes(axis, tensors[0].ndim)[0] if tensors else axis
    _check_joinable("concatenate", tensors, axis, same_axis=False)
    return Concatenate.apply(*tensors, axis=axis)


@register("stack", lambda rng: [Sample((rng.standard_normal((2, 3)), rng.standard_normal((2, 3)))),
                                Sample((rng.standard_normal((2, 3)), rng.standard_normal((2, 3))), {"axis": 2})],
          torch=lambda *xs, axis=0: __import__("torch").stack(xs, dim=axis))
def stack(*tensors, axis: int = 0):
    """Join same-shaped tensors along a new axis."""
    _check_joinable("stack", tensors, axis, same_axis=True)
    axis = norm_axes(axis, tensors[0].ndim + 1)[0]
    return Stack.apply(*tensors, axis=axis)


def _is_advanced(items) -> bool:
    """True if an integer array may repeat positions, so the backward must accumulate (boolean masks can't)."""
    return any(isinstance(i, list) or (backend.is_array(i) and i.dtype != np.bool_) for i in items)


@register("getitem", lambda rng: [
    Sample((rng.standard_normal((4, 5)), Const((slice(1, 3), slice(None, None, 2))))),
    Sample((rng.standard_normal((4, 5)), Const((Ellipsis, None, 2)))),
    Sample((rng.standard_normal((4, 5)), Const(np.array([0, 2, 2, 3])))),       # repeated rows accumulate
    Sample((rng.standard_normal((4, 5)), Const((np.array([0, 1, 1]), np.array([4, 0, 4])))))],
    torch=lambda x, index: x[index])
def getitem(x, index):
    """``x[index]`` with numpy semantics: slices, integers, None, Ellipsis, integer and boolean arrays."""
    items = index if isinstance(index, tuple) else (index,)
    items = tuple(i.data if isinstance(i, Tensor) else i for i in items)
    index = items if isinstance(index, tuple) else items[0]
    try:
        np.empty(x.shape, dtype=np.bool_)[tuple(backend.to_host(i) if backend.is_array(i) else i
                                               for i in items)]
    except IndexError as e:
        raise IndexError(f"getitem: index {index!r} does not fit a tensor of shape {x.shape}: {e}") from None
    return GetItem.apply(x, index=index, advanced=_is_advanced(items))


def _gather_samples(rng):
    x, i = rng.standard_normal, rng.integers
    return [Sample((x((3, 4)), Const(i(0, 4, (3, 2)))), {"axis": 1}),
            Sample((x((3, 4)), Const(i(0, 3, (5, 4)))), {"axis": 0}),
            Sample((x((3, 4)), Const(i(0, 4, (2, 3)))), {"axis": 1}),           # index smaller than x off axis
            Sample((x((3, 4)), Const(i(0, 3, (2, 3)))), {"axis": 0}),
            Sample((x((2, 3, 4)), Const(i(0, 3, (1, 5, 2)))), {"axis": -2}),
            Sample((x((4,)), Const(np.array(2))), {"axis": 0})]                 # a 0-d index counts as 1-d


@register("gather", _gather_samples, torch=lambda x, index, axis: __import__("torch").gather(x, axis, index))
def gather(x, index, axis: int):
    """PyTorch's gather: out[i][j] = x[i][index[i][j]] for axis=1; the output has index's shape.

    ``index`` holds integers and has x's number of dimensions (a 0-d tensor counts as 1-d, as in PyTorch).
    Along ``axis`` it may be any length; along every other axis it must be no longer than x, and reads
    x's leading part there. The gradient scatter-adds into x (repeated indices accumulate).
    Deliberate difference: negative indices count from the end, as in numpy (PyTorch rejects them).
    """
    index = index.data if isinstance(index, Tensor) else index
    if getattr(index, "dtype", np.dtype(float)).kind not in "iu":
        raise TypeError(f"gather: index must be an integer array, got {getattr(index, 'dtype', type(index))}")
    if 0 in (x.ndim, index.ndim) and max(x.ndim, index.ndim) <= 1:
        return reshape(gather(reshape(x, (-1,)), index.reshape(-1), norm_axes(axis, 1)[0]), index.shape)
    axis = norm_axes(axis, x.ndim)[0]
    if index.ndim != x.ndim:
        raise ValueError(f"gather: index must have x's {x.ndim} dimensions, got shape {index.shape}")
    for d, (m, size) in enumerate(zip(index.shape, x.shape)):
        if d != axis and m > size:
            raise ValueError(f"gather: index may not be longer than x off the gathered axis {axis}, but along "
                             f"axis {d} it has {m} > {size}; got index shape {index.shape}, x shape {x.shape}")
    n = x.shape[axis]
    if index.size and (int(index.min()) < -n or int(index.max()) >= n):
        raise IndexError(f"gather: index values must lie in [-{n}, {n}) along axis {axis}, "
                         f"got [{int(index.min())}, {int(index.max())}]")
    return Gather.apply(x, index % n, axis=axis)


@register("pad", lambda rng: [
    Sample((rng.standard_normal((2, 3)),), {"pad_width": ((1, 2), (0, 1)), "value": 0.5}),
    Sample((rng.standard_normal((2, 3, 4)),), {"pad_width": ((0, 0), (1, 1), (2, 3)), "mode": "circular"}),
    Sample((rng.standard_normal((3, 4)),), {"pad_width": ((2, 1), (1, 2)), "mode": "reflect"}),
    Sample((rng.standard_normal((3, 4)),), {"pad_width": ((1, 2), (2, 0)), "mode": "edge"})],
    torch=lambda x, pad_width, mode="constant", value=0.0: _torch_pad(x, pad_width, mode, value))
def pad(x, pad_width, mode: str = "constant", value: float = 0.0):
    """Pad each axis by (before, after) elements: ``constant`` (``value``), ``circular`` (periodic, e.g.
    longitude), ``reflect``, ``symmetric`` or ``edge``. ``pad_width`` is numpy's: an int, a pair, or a pair per axis.
    """
    if mode != "constant" and mode not in _NUMPY_MODES:
        raise ValueError(f"pad: mode must be one of {['constant', *_NUMPY_MODES]}, got {mode!r}")
    widths = np.broadcast_to(np.asarray(pad_width, dtype=np.int64), (x.ndim, 2)) if np.ndim(pad_width) < 2 \
        else np.asarray(pad_width, dtype=np.int64)
    if widths.shape != (x.ndim, 2) or (widths < 0).any():
        raise ValueError(f"pad: pad_width must give non-negative (before, after) for each of {x.ndim} axes, "
                         f"got {pad_width!r}")
    for axis, (lo, hi) in enumerate(widths):
        n = x.shape[axis]
        limit = n if mode == "circular" else n - 1 if mode == "reflect" else None
        if limit is not None and max(lo, hi) > limit:
            raise ValueError(f"pad: {mode} padding of axis {axis} by {max(lo, hi)} needs at most {limit} "
                             f"(the axis has {n} elements)")
    return Pad.apply(x, widths=tuple(map(tuple, widths.tolist())), mode=mode, value=value)


def _torch_pad(x, pad_width, mode, value):
    """The reference for ``pad``, built from torch indexing (torch's F.pad limits modes to trailing axes)."""
    import torch
    out = x
    for axis, (lo, hi) in enumerate(np.broadcast_to(np.asarray(pad_width), (x.ndim, 2))):
        n = out.shape[axis]
        if mode == "constant":
            shape = list(out.shape)
            parts = [torch.full(shape[:axis] + [int(lo)] + shape[axis + 1:], value, dtype=x.dtype), out,
                     torch.full(shape[:axis] + [int(hi)] + shape[axis + 1:], value, dtype=x.dtype)]
            out = torch.cat(parts, dim=axis)
        else:
            idx = torch.from_numpy(np.pad(np.arange(n), (int(lo), int(hi)), mode=_NUMPY_MODES[mode]))
            out = out.index_select(axis, idx)
    return out
