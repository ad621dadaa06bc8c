"""LARS: SGD with momentum whose step is scaled per layer by a trust ratio ||w|| / ||g||."""
from __future__ import annotations

from .. import backend
from .optimizer import Optimizer, buffer, check_hyper, l2norm


class LARS(Optimizer):
    """Layer-wise Adaptive Rate Scaling [You, Gitman & Ginsburg 2017, Algorithm 1].

    Per parameter tensor ("layer"), with ``beta = weight_decay`` and ``eta = trust_coefficient``:
    ``local = eta ||w|| / (||g|| + beta ||w||)`` (1 when either norm is 0),
    ``v = momentum v + lr local (g + beta w)``, ``w -= v``. With ``exclude_1d`` (common practice),
    biases and other parameters with ``ndim <= 1`` use ``local = 1``, i.e. plain momentum SGD.
    Large batches need a large global ``lr``: ``eta`` already makes the step small.
    """

    def __init__(self, params, lr: float = 1.0, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 1e-3, exclude_1d: bool = True):
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                         trust_coefficient=trust_coefficient, exclude_1d=exclude_1d)

    def _validate(self, group):
        check_hyper(group, rates=("lr", "weight_decay", "trust_coefficient"), fractions=("momentum",),
                    flags=("exclude_1d",))

    def _update(self, w, g, state, group):
        xp = backend.get_array_module(w)
        lr, wd, momentum = group["lr"], group["weight_decay"], group["momentum"]
        d = g + wd * w if wd != 0 else g
        if w.ndim > 1 or not group["exclude_1d"]:
            w_norm, g_norm = l2norm(w), l2norm(g)
            ok = (w_norm > 0) & (g_norm > 0)
            ratio = xp.where(ok, group["trust_coefficient"] * w_norm / xp.where(ok, g_norm + wd * w_norm, 1), 1)
            d = (lr * ratio).astype(w.dtype) * d
        else:
            d = lr * d
        if momentum != 0:
            v = buffer(state, "momentum_buffer", w)
            v *= momentum
            v += d
            d = v
        w -= d
