"""Numerically stable softmax, log-softmax and log-sum-exp (the maximum is subtracted first)."""
from __future__ import annotations

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
        xp, m = self.xp, x.max(axis=self.axes, keepdims=True)
        self.x, y = x, m + xp.log(xp.exp(x - m).sum(axis=self.axes, keepdims=True))
        self.y = y
        return y if self.keepdims else y.reshape([n for i, n in enumerate(x.shape) if i not in self.axes])

    def backward(self, gy):
        gy = gy.reshape(self.y.shape)
        return gy * self.xp.exp(self.x - self.y)


def _samples(rng):
    return [Sample((rng.standard_normal((4, 5)) * 3,)),
            Sample((rng.standard_normal((2, 3, 4)),), {"axis": 1}),
            Sample((rng.standard_normal((3, 4)) + 500.0,))]  # large logits: a naive exp would overflow


def _axis(axis, ndim):
    if not isinstance(axis, int):
        raise TypeError(f"axis: expected one integer axis, got {axis!r}")
    return norm_axes(axis, ndim)[0]


@register("softmax", _samples, torch=lambda x, axis=-1: __import__("torch").softmax(x, dim=axis))
def softmax(x, axis: int = -1):
    """exp(x) / sum(exp(x)) along ``axis``."""
    return Softmax.apply(x, axis=_axis(axis, x.ndim))


@register("log_softmax", _samples, torch=lambda x, axis=-1: __import__("torch").log_softmax(x, dim=axis))
def log_softmax(x, axis: int = -1):
    """log(softmax(x)) along ``axis``, without forming the softmax."""
    return LogSoftmax.apply(x, axis=_axis(axis, x.ndim))


@register("logsumexp", lambda rng: _samples(rng) + [Sample((rng.standard_normal((3, 4, 2)),),
                                                           {"axis": (0, 2), "keepdims": True})],
          torch=lambda x, axis=-1, keepdims=False: __import__("torch").logsumexp(x, dim=axis, keepdim=keepdims))
def logsumexp(x, axis=-1, keepdims: bool = False):
    """log(sum(exp(x))) over ``axis`` (None: all axes)."""
    return LogSumExp.apply(x, axes=norm_axes(axis, x.ndim), keepdims=bool(keepdims))
