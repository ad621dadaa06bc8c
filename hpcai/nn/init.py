"""Weight initialisers, each drawing from an explicit seeded generator so runs are reproducible.

Fans follow PyTorch's layout: a weight of shape (out, in, *kernel) has fan_in = in * prod(kernel) and
fan_out = out * prod(kernel). Glorot & Bengio (2010) keep activation variance across tanh/linear
layers; He et al. (2015) double it for ReLU.
"""
from __future__ import annotations

import math

import numpy as np

from .. import checks


def generator(rng) -> np.random.Generator:
    """``rng`` as a numpy Generator: a Generator passes through, an int seeds one, None draws a fresh seed."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        return np.random.default_rng()
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, (bool, np.bool_)):
        return np.random.default_rng(checks.integer("rng", rng, 0))
    raise TypeError(f"rng: expected a numpy Generator, an int seed >= 0 or None, got {type(rng).__name__}")


def float_dtype(dtype) -> np.dtype:
    """``dtype`` as a numpy floating-point dtype (what parameters are stored in), else a ValueError naming it."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.kind != "f":
        raise ValueError(f"dtype: expected a floating-point dtype such as np.float32, got {dtype!r}")
    return dt


def fans(shape) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of ``shape``."""
    if len(shape) < 2:
        raise ValueError(f"shape: fans need a weight with at least 2 dimensions, got {tuple(shape)}")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def glorot_uniform(shape, rng=None, gain: float = 1.0, dtype=np.float32):
    fan_in, fan_out = fans(shape)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return generator(rng).uniform(-bound, bound, shape).astype(dtype)


def glorot_normal(shape, rng=None, gain: float = 1.0, dtype=np.float32):
    fan_in, fan_out = fans(shape)
    return (generator(rng).standard_normal(shape) * gain * math.sqrt(2.0 / (fan_in + fan_out))).astype(dtype)


def he_uniform(shape, rng=None, gain: float = math.sqrt(2.0), dtype=np.float32):
    bound = gain * math.sqrt(3.0 / fans(shape)[0])
    return generator(rng).uniform(-bound, bound, shape).astype(dtype)


def he_normal(shape, rng=None, gain: float = math.sqrt(2.0), dtype=np.float32):
    return (generator(rng).standard_normal(shape) * gain / math.sqrt(fans(shape)[0])).astype(dtype)


def zeros(shape, rng=None, dtype=np.float32):
    return np.zeros(shape, dtype)


def constant(shape, rng=None, value: float = 0.0, dtype=np.float32):
    return np.full(shape, value, dtype)


INITIALIZERS = {"glorot_uniform": glorot_uniform, "glorot_normal": glorot_normal, "he_uniform": he_uniform,
                "he_normal": he_normal, "zeros": zeros, "constant": constant}


def initialize(init, shape, rng=None, dtype=np.float32):
    """Array from an initialiser given by name (see :data:`INITIALIZERS`) or as a callable."""
    dtype = float_dtype(dtype)
    if callable(init):
        return np.asarray(init(shape, rng, dtype=dtype), dtype=dtype)
    return INITIALIZERS[checks.choice("init", init, INITIALIZERS)](shape, rng, dtype=dtype)
