"""The op registry: every differentiable op registers here once, with sample inputs and a reference.

Tests iterate :data:`OPS`: each sample is gradient-checked in fp64 and, when PyTorch is installed,
compared with the ``torch`` reference. Registering an op brings it under those checks with no new test.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class Const:
    """Marks a sample argument as a constant (labels, indices, masks): passed as is, never differentiated."""

    value: object


@dataclasses.dataclass
class Sample:
    """One call of an op: float arrays in ``args`` become fp64 tensors that require grad.

    ``gradcheck=False`` marks an edge case (infinities, NaN, a kink) that finite differences cannot
    check (inf - inf is NaN): it is compared with the PyTorch reference only.
    """

    args: tuple
    kwargs: dict = dataclasses.field(default_factory=dict)
    gradcheck: bool = True


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """An op as the tests see it.

    ``samples(rng)`` returns a list of :class:`Sample`; ``torch(*args, **kwargs)`` is the same call in
    PyTorch (None if it has no counterpart); ``differentiable=False`` marks ops (comparisons) whose
    output carries no gradient; ``gradcheck`` tolerances can be loosened per op where justified.
    """

    name: str
    fn: Callable
    samples: Callable[[np.random.Generator], list]
    torch: Callable | None = None
    differentiable: bool = True
    tol: dict = dataclasses.field(default_factory=dict)


OPS: dict[str, OpSpec] = {}


def register(name: str, samples, torch=None, differentiable: bool = True, **tol):
    """Decorator: add the public function of an op to :data:`OPS` under ``name``."""
    def deco(fn):
        if name in OPS:
            raise ValueError(f"name: op {name!r} is already registered")
        OPS[name] = OpSpec(name, fn, samples, torch, differentiable, tol)
        return fn
    return deco


def away_from_zero(rng, shape, low=0.2, high=1.5):
    """Random values with |x| in [low, high): finite differences stay off kinks and poles."""
    return rng.uniform(low, high, shape) * rng.choice([-1.0, 1.0], shape)
