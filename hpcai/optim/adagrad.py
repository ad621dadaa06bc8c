"""Adagrad: per-coordinate step sizes that shrink with the sum of squared past gradients."""
from __future__ import annotations

from .. import backend
from .optimizer import Optimizer, buffer, check_hyper


class Adagrad(Optimizer):
    """Adagrad [Duchi, Hazan & Singer 2011, eqn 1 with diagonal G], as ``torch.optim.Adagrad`` writes it.

    ``s += g^2`` (``s`` starts at ``initial_accumulator_value``), then
    ``w -= lr / (1 + (t-1) lr_decay) * g / (sqrt(s) + eps)`` at step ``t``.
    """

    def __init__(self, params, lr: float = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10):
        super().__init__(params, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                         initial_accumulator_value=initial_accumulator_value, eps=eps)

    def _validate(self, group):
        check_hyper(group, rates=("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps"))

    def _update(self, w, g, state, group):
        xp = backend.get_array_module(w)
        if group["weight_decay"] != 0:
            g = g + group["weight_decay"] * w
        clr = group["lr"] / (1 + (state["step"] - 1) * group["lr_decay"])
        state_sum = buffer(state, "sum", w, group["initial_accumulator_value"])
        state_sum += g * g
        w -= clr * g / (xp.sqrt(state_sum) + group["eps"])
