"""RMSprop: divide the gradient by a running root-mean-square of recent gradients."""
from __future__ import annotations

from .. import backend
from .optimizer import Optimizer, buffer, check_hyper


class RMSprop(Optimizer):
    """RMSprop [Hinton, Coursera lecture 6e, 2012; centred form: Graves 2013, eqns 38-45], as torch writes it.

    ``s = alpha s + (1-alpha) g^2``; the denominator is ``sqrt(s) + eps``, or with ``centered``
    ``sqrt(s - a^2) + eps`` where ``a = alpha a + (1-alpha) g``. With momentum,
    ``b = momentum b + g / denom`` and ``w -= lr b``; otherwise ``w -= lr g / denom``.
    """

    def __init__(self, params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False):
        super().__init__(params, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                         momentum=momentum, centered=centered)

    def _validate(self, group):
        check_hyper(group, rates=("lr", "eps", "weight_decay"), fractions=("momentum", "alpha"), flags=("centered",))

    def _update(self, w, g, state, group):
        xp = backend.get_array_module(w)
        alpha, wd, momentum = group["alpha"], group["weight_decay"], group["momentum"]
        if wd != 0:
            g = g + wd * w
        square_avg = buffer(state, "square_avg", w)
        square_avg *= alpha
        square_avg += (1 - alpha) * g * g
        if group["centered"]:
            grad_avg = buffer(state, "grad_avg", w)
            grad_avg += (1 - alpha) * (g - grad_avg)
            denom = xp.sqrt(square_avg - grad_avg * grad_avg) + group["eps"]
        else:
            denom = xp.sqrt(square_avg) + group["eps"]
        if momentum > 0:
            buf = buffer(state, "momentum_buffer", w)
            buf *= momentum
            buf += g / denom
            w -= group["lr"] * buf
        else:
            w -= group["lr"] * g / denom
