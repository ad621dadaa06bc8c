"""Gradient clipping, in place, as ``torch.nn.utils`` does it: by total norm or by value."""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..autograd.tensor import Tensor
from .. import checks


def _grads(params) -> list:
    params = [params] if isinstance(params, Tensor) else list(params)
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"params[{i}]: expected a Tensor, got {type(p).__name__}")
    return [p.grad for p in params if p.grad is not None]


def _norm(a, norm_type: float):
    """The ``norm_type``-norm of all entries of ``a``, a 0-d array accumulated in at least fp32."""
    xp = backend.get_array_module(a)
    a = xp.abs(a.astype(np.promote_types(a.dtype, np.float32), copy=False))
    if norm_type == math.inf:
        return a.max() if a.size else xp.zeros((), a.dtype)
    if norm_type == 2:
        return xp.sqrt(xp.sum(a * a))
    return xp.sum(a ** norm_type) ** (1 / norm_type)


def clip_grad_norm_(params, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False) -> float:
    """Scale the gradients of ``params`` so their joint norm is at most ``max_norm``; return the norm before.

    The joint norm is the norm of the per-parameter norms (``norm_type`` > 0, or ``math.inf`` for the
    largest entry). Gradients are multiplied by ``min(1, max_norm / (total + 1e-6))``. A non-finite
    total raises RuntimeError with ``error_if_nonfinite``; otherwise the gradients are scaled by it
    anyway (becoming NaN or zero), as in PyTorch, so that a loss-scaling step can detect it.
    """
    max_norm = checks.number("max_norm", max_norm, 0.0)
    norm_type = float(norm_type) if norm_type == math.inf else checks.number("norm_type", norm_type, 0.0)
    if norm_type == 0:
        raise ValueError("norm_type: expected a number > 0 or math.inf, got 0")
    grads = _grads(params)
    if not grads:
        return 0.0
    xp = backend.get_array_module(grads[0])
    total = float(_norm(xp.stack([_norm(g, norm_type) for g in grads]), norm_type))
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"clip_grad_norm_: the total {norm_type:g}-norm of the gradients is {total}, so they "
                           "cannot be clipped; pass error_if_nonfinite=False to scale them by it anyway")
    coef = max_norm / (total + 1e-6)
    if not coef >= 1.0:  # NaN too, like torch
        with np.errstate(invalid="ignore"):  # inf * 0 when the total is infinite
            for g in grads:
                g *= coef
    return total


def clip_grad_value_(params, clip_value: float) -> None:
    """Clamp every gradient entry of ``params`` into ``[-clip_value, clip_value]``, in place."""
    clip_value = checks.number("clip_value", clip_value, 0.0)
    for g in _grads(params):
        backend.get_array_module(g).clip(g, -clip_value, clip_value, out=g)
