"""Inverted dropout [Srivastava et al. 2014]: zero each unit with probability p, scale the rest by 1/(1-p).

Scaling at training time keeps the expected activation unchanged, so evaluation is the identity.
The mask is drawn on the host from a numpy Generator (reproducible from a seed on every backend)
and then moved to the input's device.
"""
from __future__ import annotations


import numpy as np

from .. import checks
from ..autograd.function import Function
from ..autograd.tensor import as_tensor
from .common import expect_float
from .registry import Sample, register


class Dropout(Function):
    def forward(self, x):
        keep = self.rng.random(x.shape, dtype=np.float32) >= self.p
        self.mask = self.xp.asarray((keep / (1.0 - self.p)).astype(x.dtype))  # 0 or 1/(1-p)
        return x * self.mask

    def backward(self, gy):
        return gy * self.mask


@register("dropout", lambda rng: [Sample((rng.standard_normal((4, 5)),), {"p": 0.3, "seed": 0}),
                                  Sample((rng.standard_normal((2, 3, 4)),), {"p": 0.5, "seed": 7})])
def dropout(x, p=0.5, training=True, generator=None, seed=None):
    """Inverted dropout of ``x`` with drop probability ``p`` in [0, 1).

    The mask comes from ``generator`` (a ``numpy.random.Generator``, advanced by each call) or a fresh
    generator seeded with ``seed`` (the same mask on every call: what gradient checks need); with
    neither, from fresh OS entropy. Not training, or p == 0, returns ``x`` unchanged.
    """
    p = checks.number("dropout: p", p, 0.0, 1.0, high_open=True)
    if generator is not None and seed is not None:
        raise ValueError("dropout: pass generator or seed, not both")
    if generator is not None and not isinstance(generator, np.random.Generator):
        raise TypeError(f"dropout: generator must be a numpy.random.Generator, got {type(generator).__name__}")
    expect_float(x, "x", "dropout")
    if not training or p == 0:
        return as_tensor(x)
    rng = generator if generator is not None else np.random.default_rng(seed)
    return Dropout.apply(x, p=float(p), rng=rng)
