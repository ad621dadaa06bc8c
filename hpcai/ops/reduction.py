"""Reductions over axes: sum, mean, max, min, var (with ``keepdims``)."""
from __future__ import annotations

import numpy as np

from ..autograd.function import Function
from .common import norm_axes
from .registry import Sample, register


def _expand(gy, in_shape, axes):
    """``gy`` of a reduction over ``axes``, reshaped so it broadcasts against the input."""
    return gy.reshape([1 if i in axes else n for i, n in enumerate(in_shape)])


class Sum(Function):
    def forward(self, x):
        self.in_shape = x.shape
        return x.sum(axis=self.axes, keepdims=self.keepdims)

    def backward(self, gy):
        return self.xp.broadcast_to(_expand(gy, self.in_shape, self.axes), self.in_shape)


class Mean(Function):
    def forward(self, x):
        self.in_shape = x.shape
        self.count = int(np.prod([x.shape[a] for a in self.axes]))
        return x.mean(axis=self.axes, keepdims=self.keepdims)

    def backward(self, gy):
        return self.xp.broadcast_to(_expand(gy, self.in_shape, self.axes) / self.count, self.in_shape)


class Extremum(Function):
    """max or min; tied extremes share the gradient equally (like numpy's and PyTorch's amax)."""

    def forward(self, x):
        y = (x.max if self.largest else x.min)(axis=self.axes, keepdims=True)
        self.mask = x == y
        return y if self.keepdims else y.reshape([n for i, n in enumerate(x.shape) if i not in self.axes])

    def backward(self, gy):
        share = self.mask / self.mask.sum(axis=self.axes, keepdims=True)
        return _expand(gy, self.mask.shape, self.axes) * share


class Var(Function):
    def forward(self, x):
        self.count = int(np.prod([x.shape[a] for a in self.axes]))
        if self.count - self.correction <= 0:
            raise ValueError(f"var: correction={self.correction} leaves no degrees of freedom "
                             f"for {self.count} element(s)")
        self.centered = x - x.mean(axis=self.axes, keepdims=True)
        return (self.centered ** 2).sum(axis=self.axes, keepdims=self.keepdims) / (self.count - self.correction)

    def backward(self, gy):
        return _expand(gy, self.centered.shape, self.axes) * (2 / (self.count - self.correction)) * self.centered


def _samples(rng):
    return [Sample((rng.standard_normal((3, 4, 5)),)),
            Sample((rng.standard_normal((3, 4, 5)),), {"axis": 1}),
            Sample((rng.standard_normal((3, 4, 5)),), {"axis": (0, 2), "keepdims": True}),
            Sample((rng.standard_normal((4, 5)),), {"axis": -1})]


def _torch_reduce(name):
    def ref(x, axis=None, keepdims=False, **kw):
        import torch
        dim = tuple(range(x.ndim)) if axis is None else axis
        return getattr(torch, name)(x, dim=dim, keepdim=keepdims, **kw)
    return ref


def _reduce(cls, x, axis, keepdims, **params):
    return cls.apply(x, axes=norm_axes(axis, x.ndim), keepdims=bool(keepdims), **params)


@register("sum", _samples, torch=_torch_reduce("sum"))
def sum(x, axis=None, keepdims=False):  # noqa: A001
    """Sum over ``axis`` (None: all axes)."""
    return _reduce(Sum, x, axis, keepdims)


@register("mean", _samples, torch=_torch_reduce("mean"))
def mean(x, axis=None, keepdims=False):
    """Mean over ``axis`` (None: all axes)."""
    return _reduce(Mean, x, axis, keepdims)


@register("max", _samples, torch=_torch_reduce("amax"))
def max(x, axis=None, keepdims=False):  # noqa: A001
    """Largest value over ``axis``; ties share the gradient."""
    return _reduce(Extremum, x, axis, keepdims, largest=True)


@register("min", _samples, torch=_torch_reduce("amin"))
def min(x, axis=None, keepdims=False):  # noqa: A001
    """Smallest value over ``axis``; ties share the gradient."""
    return _reduce(Extremum, x, axis, keepdims, largest=False)


@register("var", lambda rng: _samples(rng) + [Sample((rng.standard_normal((3, 4)),), {"axis": 0, "correction": 0})],
          torch=_torch_reduce("var"))
def var(x, axis=None, keepdims=False, correction: int = 1):
    """Variance over ``axis``, dividing by N - correction (1: unbiased, as in PyTorch; 0: population)."""
    return _reduce(Var, x, axis, keepdims, correction=int(correction))
