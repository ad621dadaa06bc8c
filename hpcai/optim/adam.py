"""Adam and AdamW: moment estimates with bias correction; L2 penalty (Adam) or decoupled decay (AdamW)."""
from __future__ import annotations

from .. import backend
from .optimizer import Optimizer, buffer, check_betas, check_hyper


class Adam(Optimizer):
    """Adam [Kingma & Ba 2015, Algorithm 1], as ``torch.optim.Adam`` writes it.

    ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g^2`` (``g`` includes ``weight_decay * w``);
    ``w -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)``. With ``amsgrad`` the running maximum
    of ``v`` replaces ``v`` in the denominator [Reddi et al. 2018].
    """

    decoupled = False  # AdamW: decay the weights directly instead of adding to the gradient

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)

    def _validate(self, group):
        check_hyper(group, rates=("lr", "eps", "weight_decay"), flags=("amsgrad",))
        group["betas"] = check_betas(group["betas"])

    def _update(self, w, g, state, group):
        xp = backend.get_array_module(w)
        lr, wd, (beta1, beta2), t = group["lr"], group["weight_decay"], group["betas"], state["step"]
        if wd != 0:
            if self.decoupled:
                w *= 1 - lr * wd
            else:
                g = g + wd * w
        m, v = buffer(state, "exp_avg", w), buffer(state, "exp_avg_sq", w)
        m += (1 - beta1) * (g - m)
        v *= beta2
        v += (1 - beta2) * g * g
        if group["amsgrad"]:
            v = xp.maximum(buffer(state, "max_exp_avg_sq", w), v, out=state["max_exp_avg_sq"])
        denom = xp.sqrt(v) / (1 - beta2 ** t) ** 0.5 + group["eps"]
        w -= (lr / (1 - beta1 ** t)) * m / denom


class AdamW(Adam):
    """AdamW [Loshchilov & Hutter 2019, Algorithm 2]: Adam with ``w *= 1 - lr * weight_decay`` first."""

    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
