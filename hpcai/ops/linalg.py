"""Matrix products: matmul with numpy's batching rules, optionally in a reduced precision; on the CPU
the products share out among hpcai's threads (``threads.matmul``)."""
from __future__ import annotations

import numpy as np

from .. import precision as _precision
from ..autograd.function import Function
from .common import unbroadcast
from .registry import Sample, register
from .threads import matmul as matmul_on_threads


def _product(xp, a, b):
    """a @ b: on the CPU through ``threads.matmul`` (BLAS's threads only for large products)."""
    return matmul_on_threads(a, b) if xp is np else xp.matmul(a, b)


class MatMul(Function):
    """(..., m, k) @ (..., k, n) with broadcast batch axes; ``precision`` picks the GEMM's numerics."""

    lowp = True

    def forward(self, a, b):
        self.a, self.b = a, b
        return self._mm(a, b)

    def _mm(self, a, b):
        if self.precision is None:
            return _product(self.xp, a, b)
        return _precision.matmul(a, b, self.precision).astype(a.dtype, copy=False)

    def backward(self, gy):
        a, b = self.a, self.b
        ga = unbroadcast(self._mm(gy, b.swapaxes(-1, -2)), a.shape) if self.needs_input_grad[0] else None
        gb = unbroadcast(self._mm(a.swapaxes(-1, -2), gy), b.shape) if self.needs_input_grad[1] else None
        return ga, gb


def _samples(rng):
    n = rng.standard_normal
    return [Sample((n((3, 4)), n((4, 5)))),
            Sample((n((2, 3, 4)), n((2, 4, 2)))),     # batched
            Sample((n((2, 1, 3, 4)), n((3, 4, 2)))),  # broadcast batch axes
            Sample((n((4,)), n((4, 3)))),             # vector @ matrix
            Sample((n((3, 4)), n((4,)))),             # matrix @ vector
            Sample((n((4,)), n((4,))))]               # vector @ vector: a 0-d result


@register("matmul", _samples, torch=lambda a, b: a @ b)
def matmul(a, b, precision=None):
    """a @ b with numpy's rules (1-d operands are promoted and the added axes removed: vector @ vector is 0-d).

    ``precision`` ("fp16", "bf16", "fp16x3", ...; see :mod:`hpcai.precision`) computes the forward and
    backward products the way tensor cores do; None uses the operands' own dtype.
    """
    from .shape import reshape
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul: a and b must have at least one dimension, got shapes {a.shape} and {b.shape}")
    if a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
        raise ValueError(f"matmul: a's last axis ({a.shape[-1]}) must match b's "
                         f"{'second-to-last' if b.ndim > 1 else 'only'} axis; got shapes {a.shape} and {b.shape}")
    if precision is not None and precision not in _precision.MATMUL_MODES:
        raise ValueError(f"matmul: precision must be None or one of {list(_precision.MATMUL_MODES)}, "
                         f"got {precision!r}")
    if a.ndim == 1:
        return reshape(matmul(reshape(a, (1, -1)), b, precision), b.shape[:-2] + b.shape[-1:] if b.ndim > 1 else ())
    if b.ndim == 1:
        return reshape(matmul(a, reshape(b, (-1, 1)), precision), a.shape[:-1])
    return MatMul.apply(a, b, precision=precision)


class Linear(Function):
    """x @ w.T + b over the last axis of x, with w in PyTorch's (out, in) layout; one node instead of three,
    and a weight gradient that comes out contiguous in w's own layout."""

    lowp = True

    def forward(self, x, w, b):
        self.x2, self.w, self.in_shape = x.reshape(-1, x.shape[-1]), w, x.shape
        y = _product(self.xp, self.x2, w.T)
        if b is not None:
            y += b
        return y.reshape(x.shape[:-1] + (w.shape[0],))

    def backward(self, gy):
        g2 = gy.reshape(-1, gy.shape[-1])
        need_x, need_w, need_b = self.needs_input_grad
        gx = _product(self.xp, g2, self.w).reshape(self.in_shape) if need_x else None
        gw = _product(self.xp, g2.T, self.x2) if need_w else None
        gb = g2.sum(axis=0) if need_b else None
        return gx, gw, gb


@register("linear", lambda rng: [
    Sample((rng.standard_normal((4, 3)), rng.standard_normal((5, 3)), rng.standard_normal(5))),
    Sample((rng.standard_normal((2, 4, 3)), rng.standard_normal((2, 3)), None))],
    torch=lambda x, w, b: __import__("torch").nn.functional.linear(x, w, b))
def linear(x, weight, bias=None):
    """``x @ weight.T + bias`` (weight (out, in), bias (out,) or None), as in PyTorch's F.linear."""
    if weight.ndim != 2 or x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: x must end in weight's {weight.shape[-1] if weight.ndim else '?'} input features "
                         f"and weight must be 2-d (out, in); got x {tuple(x.shape)} and weight {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"linear: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    return Linear.apply(x, weight, bias)
