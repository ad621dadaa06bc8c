"""Finite-difference gradient checking in fp64, the independent check every op goes through."""
from __future__ import annotations

import numpy as np

from .function import no_grad
from .tensor import Tensor


class GradcheckError(AssertionError):
    """Analytic and numerical gradients disagree."""


def gradcheck(fn, inputs, kwargs=None, eps=1e-6, atol=1e-6, rtol=1e-5, seed=0) -> bool:
    """Check autodiff gradients of ``fn(*inputs, **kwargs)`` against central differences.

    Every Tensor input with ``requires_grad`` must be float64. The scalar checked is
    ``sum(fn(...) * v)`` for a fixed random ``v``, so every output element is exercised.
    Returns True, or raises :class:`GradcheckError` naming the input and the worst element.
    """
    kwargs = kwargs or {}
    wrt = [i for i, x in enumerate(inputs) if isinstance(x, Tensor) and x.requires_grad]
    if not wrt:
        raise ValueError("inputs: gradcheck needs at least one Tensor with requires_grad=True")
    for i in wrt:
        if inputs[i].dtype != np.float64:
            raise TypeError(f"inputs[{i}]: gradcheck needs float64 tensors, got {inputs[i].dtype}")
        inputs[i].grad = None
    out = fn(*inputs, **kwargs)
    if not out.requires_grad:
        raise GradcheckError("fn: the output does not depend on any input that requires grad")
    xp = out.xp
    v = xp.asarray(np.random.default_rng(seed).standard_normal(out.shape))
    out.backward(v)

    def objective():
        with no_grad():
            return float((fn(*inputs, **kwargs).data * v).sum())

    for i in wrt:
        x = inputs[i]
        x.data = xp.ascontiguousarray(x.data)  # so the flat view below writes through
        analytic = x.grad if x.grad is not None else xp.zeros_like(x.data)
        numeric = xp.zeros_like(x.data)
        flat, nflat = x.data.reshape(-1), numeric.reshape(-1)  # views: writes go to x.data / numeric
        for j in range(flat.size):
            orig = float(flat[j])
            flat[j] = orig + eps
            f_plus = objective()
            flat[j] = orig - eps
            f_minus = objective()
            flat[j] = orig
            nflat[j] = (f_plus - f_minus) / (2 * eps)
        err = xp.abs(analytic - numeric)
        bad = ~(err <= atol + rtol * xp.abs(numeric))  # NaN counts as a mismatch
        if bool(bad.any()):
            k = int(xp.argmax(err - rtol * xp.abs(numeric)))
            idx = tuple(int(v) for v in np.unravel_index(k, x.shape))
            raise GradcheckError(
                f"inputs[{i}] (shape {x.shape}): gradient mismatch at {idx}: autodiff "
                f"{float(analytic.reshape(-1)[k]):.10g}, finite differences {float(numeric.reshape(-1)[k]):.10g} "
                f"({int(bad.sum())} of {x.size} elements outside atol={atol}, rtol={rtol})")
    return True
