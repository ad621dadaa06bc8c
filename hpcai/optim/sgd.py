"""Stochastic gradient descent with optional momentum (heavy ball or Nesterov) and L2 weight decay."""
from __future__ import annotations

from .optimizer import Optimizer, check_hyper


class SGD(Optimizer):
    """SGD as ``torch.optim.SGD`` defines it [Sutskever et al. 2013, eqn 3 in PyTorch's form].

    With ``d = g + weight_decay * w``: ``b = momentum * b + (1 - dampening) * d`` (the first step sets
    ``b = d``), then ``w -= lr * (d + momentum * b)`` with Nesterov, ``w -= lr * b`` without.
    """

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov)

    def _validate(self, group):
        check_hyper(group, rates=("lr", "weight_decay"), fractions=("momentum", "dampening"), flags=("nesterov",))
        if group["nesterov"] and (group["momentum"] == 0 or group["dampening"] != 0):
            raise ValueError(f"nesterov: needs momentum > 0 and dampening = 0, got momentum="
                             f"{group['momentum']:g} and dampening={group['dampening']:g}")

    def _update(self, w, g, state, group):
        lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
        d = g + wd * w if wd != 0 else g
        if momentum != 0:
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = d.copy()
            else:
                buf = state["momentum_buffer"]
                buf *= momentum
                buf += d if group["dampening"] == 0 else (1 - group["dampening"]) * d
            buf = state["momentum_buffer"]
            d = d + momentum * buf if group["nesterov"] else buf
        w -= lr * d
