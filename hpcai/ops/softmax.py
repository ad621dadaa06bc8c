"""Numerically stable softmax, log-softmax and log-sum-exp (the maximum is subtracted first).

A 0-d tensor takes axis 0 or -1, as in PyTorch: the reduction then runs over no axes (softmax 1,
log-softmax 0, logsumexp x itself).
"""
from __future__ import annotations

import numpy as np

from ..autograd.function import Function
from .common import norm_axes
from .registry import Sample, register


class Softmax(Function):
    def forward(self, x):
        e = self.xp.exp(x - x.max(axis=self.axis, keepdims=True))
        self.y = e / e.sum(axis=self.axis, keepdims=True)
        return self.y

    def backward(self, gy):
        y = self.y
        return y * (gy - (gy * y).sum(axis=self.axis, keepdims=True))


class LogSoftmax(Function):
    def forward(self, x):
        shifted = x - x.max(axis=self.axis, keepdims=True)
        self.y = shifted - self.xp.log(self.xp.exp(shifted).sum(axis=self.axis, keepdims=True))
        return self.y

    def backward(self, gy):
        return gy - self.xp.exp(self.y) * gy.sum(axis=self.axis, keepdims=True)


class LogSumExp(Function):
    def forward(self, x):
        # an infinite maximum is not subtracted (inf - inf is NaN): all -inf gives log 0 = -inf, +inf gives inf
        xp, m = self.xp, x.max(axis=self.axes, keepdims=True)
        m = xp.where(xp.isinf(m), 0, m)
        self.x, y = x, m + xp.log(xp.exp(x - m).sum(axis=self.axes, keepdims=True))
        self.y = y
        return y if self.keepdims else y.reshape([n for i, n in enumerate(x.shape) if i not in self.axes])

    def backward(self, gy):
        gy = gy.reshape(self.y.shape)
        return gy * self.xp.exp(self.x - self.y)


def _samples(rng):
    masked = rng.standard_normal((2, 4))
    masked[:, 1] = -np.inf                                   # a masked-out logit gets probability 0
    return [Sample((rng.standard_normal((4, 5)) * 3,)),
            Sample((rng.standard_normal((2, 3, 4)),), {"axis": 1}),
            Sample((rng.standard_normal((3, 4)) + 500.0,)),  # large logits: a naive exp would overflow
            Sample((np.array(rng.standard_normal()),)),       # 0-d
            Sample((masked,), gradcheck=False)]


def _lse_samples(rng):
    inf = np.inf
    rows = np.array([[-inf, -inf, -inf], [1.0, inf, 2.0], [inf, inf, 1.0], [-inf, inf, 0.0], [1.0, -inf, 2.0]])
    return _samples(rng) + [Sample((rng.standard_normal((3, 4, 2)),), {"axis": (0, 2), "keepdims": True}),
                            Sample((rows,), gradcheck=False)]


def _axis(axis, ndim):
    """One axis as an int; for a 0-d tensor 0 or -1, which become () (no axes)."""
    if not isinstance(axis, int) or isinstance(axis, bool):
        raise TypeError(f"axis: expected one integer axis, got {axis!r}")
    return _axes(axis, ndim) if ndim == 0 else norm_axes(axis, ndim)[0]


def _axes(axis, ndim):
    """``norm_axes``, but a 0-d tensor also takes axis 0 or -1 (as in PyTorch): no axes to reduce."""
    if ndim == 0 and axis in (0, -1, (0,), (-1,)):
        return ()
    if ndim == 0 and axis is not None:
        raise ValueError(f"axis: a 0-d tensor takes axis 0 or -1, got {axis!r}")
    return norm_axes(axis, ndim)


@register("softmax", _samples, torch=lambda x, axis=-1: __import__("torch").softmax(x, dim=axis))
def softmax(x, axis: int = -1):
    """exp(x) / sum(exp(x)) along ``axis``."""
    return Softmax.apply(x, axis=_axis(axis, x.ndim))


@register("log_softmax", _samples, torch=lambda x, axis=-1: __import__("torch").log_softmax(x, dim=axis))
def log_softmax(x, axis: int = -1):
    """log(softmax(x)) along ``axis``, without forming the softmax."""
    return LogSoftmax.apply(x, axis=_axis(axis, x.ndim))


@register("logsumexp", _lse_samples,
          torch=lambda x, axis=-1, keepdims=False: __import__("torch").logsumexp(x, dim=axis, keepdim=keepdims))
def logsumexp(x, axis=-1, keepdims: bool = False):
    """log(sum(exp(x))) over ``axis`` (None: all axes); -inf if every term is -inf, inf if one is +inf."""
    return LogSumExp.apply(x, axes=_axes(axis, x.ndim), keepdims=bool(keepdims))
