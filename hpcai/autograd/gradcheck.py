"""Finite-difference gradient checking in fp64, the independent check every op and model goes through."""
from __future__ import annotations

import numpy as np

from .function import no_grad
from .tensor import Tensor


class GradcheckError(AssertionError):
    """Analytic and numerical gradients disagree."""


def gradcheck(fn, inputs, kwargs=None, eps=1e-6, atol=1e-6, rtol=1e-5, seed=0, directional=False) -> bool:
    """Check autodiff gradients of ``fn(*inputs, **kwargs)`` against central differences.

    Every Tensor input with ``requires_grad`` must be float64. The scalar checked is
    ``sum(fn(...) * v)`` for a fixed random ``v``, so every output element is exercised. Element by
    element by default; ``directional=True`` checks each input along one random direction instead (two
    evaluations per input, not per element: the way to check a whole model's parameters, where a wrong
    gradient of any element changes the directional derivative). Returns True, or raises
    :class:`GradcheckError` naming the input and the worst element.
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
    rng = np.random.default_rng(seed)
    v = xp.asarray(rng.standard_normal(out.shape))
    out.backward(v)

    def objective():
        with no_grad():
            return float((fn(*inputs, **kwargs).data * v).sum())

    def central(x, index, step):
        """d objective / d step at ``x.data[index]``, by central differences."""
        orig = x.data[index].copy()
        x.data[index] = orig + eps * step
        f_plus = objective()
        x.data[index] = orig - eps * step
        f_minus = objective()
        x.data[index] = orig
        return (f_plus - f_minus) / (2 * eps)

    for i in wrt:
        x = inputs[i]
        x.data = xp.ascontiguousarray(x.data)  # so the writes below go to the array fn reads
        grad = x.grad if x.grad is not None else xp.zeros_like(x.data)
        if directional:
            d = xp.asarray(rng.standard_normal(x.shape))
            analytic, numeric = xp.asarray([(grad * d).sum()]), xp.asarray([central(x, Ellipsis, d)])
            what = f"along a random direction (shape {x.shape})"
        else:
            analytic, numeric = grad.reshape(-1), xp.zeros(x.size)
            for j, index in enumerate(np.ndindex(x.shape)):
                numeric[j] = central(x, index, 1.0)
            what = f"(shape {x.shape})"
        err = xp.abs(analytic - numeric)
        bad = ~(err <= atol + rtol * xp.abs(numeric))  # NaN counts as a mismatch
        if bool(bad.any()):
            k = int(xp.argmax(err - rtol * xp.abs(numeric)))
            at = "" if directional else f" at {tuple(int(n) for n in np.unravel_index(k, x.shape))}"
            raise GradcheckError(
                f"inputs[{i}] {what}: gradient mismatch{at}: autodiff {float(analytic[k]):.10g}, "
                f"finite differences {float(numeric[k]):.10g} ({int(bad.sum())} of {analytic.size} "
                f"{'values' if directional else 'elements'} outside atol={atol}, rtol={rtol})")
    return True
