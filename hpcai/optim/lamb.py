"""LAMB: Adam's direction, scaled per layer by a trust ratio ||w|| / ||update||."""
from __future__ import annotations

from .. import backend
from .optimizer import Optimizer, buffer, check_betas, check_hyper, l2norm


class LAMB(Optimizer):
    """Layer-wise Adaptive Moments for Batch training [You et al. 2019 (ICLR 2020), Algorithm 2, phi = identity].

    Adam moments with bias correction give ``r = m_hat / (sqrt(v_hat) + eps)``; with
    ``u = r + weight_decay w`` the step is ``w -= lr (||w|| / ||u||) u`` (ratio 1 when either norm is 0).
    With ``exclude_1d`` (common practice) parameters with ``ndim <= 1`` use ratio 1.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 1e-2, exclude_1d: bool = True):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, exclude_1d=exclude_1d)

    def _validate(self, group):
        check_hyper(group, rates=("lr", "eps", "weight_decay"), flags=("exclude_1d",))
        group["betas"] = check_betas(group["betas"])

    def _update(self, w, g, state, group):
        xp = backend.get_array_module(w)
        (beta1, beta2), t, wd = group["betas"], state["step"], group["weight_decay"]
        m, v = buffer(state, "exp_avg", w), buffer(state, "exp_avg_sq", w)
        m += (1 - beta1) * (g - m)
        v *= beta2
        v += (1 - beta2) * g * g
        u = (m / (1 - beta1 ** t)) / (xp.sqrt(v / (1 - beta2 ** t)) + group["eps"])
        if wd != 0:
            u += wd * w
        if w.ndim > 1 or not group["exclude_1d"]:
            w_norm, u_norm = l2norm(w), l2norm(u)
            ok = (w_norm > 0) & (u_norm > 0)
            ratio = xp.where(ok, w_norm / xp.where(ok, u_norm, 1), 1)
            w -= (group["lr"] * ratio).astype(w.dtype) * u
        else:
            w -= group["lr"] * u
