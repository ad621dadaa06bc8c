"""Learning-rate schedules: each sets every group's ``lr`` from a closed formula of the step count.

Call ``scheduler.step()`` once per epoch (or iteration) after ``optimizer.step()``, as in PyTorch. A
schedule remembers each group's starting ``lr`` as ``group["initial_lr"]``; its state dict is a
plain JSON-able dict. Formulas follow ``torch.optim.lr_scheduler`` (closed forms), so runs compare.
"""
from __future__ import annotations

import math

from .. import checks
from .optimizer import Optimizer


class LRScheduler:
    """Base class: subclasses define :meth:`lr_at` and list their settings in ``_settings``."""

    _settings: tuple = ()

    def __init__(self, optimizer: Optimizer):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer: expected an hpcai Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = -1
        self.step()  # epoch 0: the schedule's first learning rate

    def lr_at(self, epoch: int) -> list:
        """Each group's learning rate at ``epoch`` (0 = before the first step)."""
        raise NotImplementedError(type(self).__name__)

    def step(self) -> None:
        """Advance one epoch and write the new learning rates into the optimizer."""
        self.last_epoch += 1
        self._last_lr = [float(lr) for lr in self.lr_at(self.last_epoch)]
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr

    def get_last_lr(self) -> list:
        """The learning rates set by the latest :meth:`step`, one per group."""
        return list(self._last_lr)

    def state_dict(self) -> dict:
        """Step count, base rates and settings, as a JSON-able dict."""
        return {"scheduler": type(self).__name__, "last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs),
                "last_lr": list(self._last_lr), **{k: getattr(self, k) for k in self._settings}}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` saved (the optimizer's lr comes from its own state dict)."""
        if state.get("scheduler") != type(self).__name__:
            raise ValueError(f"state: saved by {state.get('scheduler')!r}, cannot load into {type(self).__name__}")
        if len(state["base_lrs"]) != len(self.base_lrs):
            raise ValueError(f"state: has {len(state['base_lrs'])} parameter groups, the optimizer "
                             f"{len(self.base_lrs)}")
        self.last_epoch, self.base_lrs, self._last_lr = state["last_epoch"], list(state["base_lrs"]), \
            list(state["last_lr"])
        for k in self._settings:
            setattr(self, k, state[k])

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._settings)
        return f"{type(self).__name__}({settings}, last_epoch={self.last_epoch})"


class StepLR(LRScheduler):
    """``lr = base_lr * gamma ** (epoch // step_size)``: decay by ``gamma`` every ``step_size`` epochs."""

    _settings = ("step_size", "gamma")

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1):
        self.step_size, self.gamma = checks.integer("step_size", step_size, 1), checks.number("gamma", gamma, 0.0)
        super().__init__(optimizer)

    def lr_at(self, epoch):
        return [base * self.gamma ** (epoch // self.step_size) for base in self.base_lrs]


class ExponentialLR(LRScheduler):
    """``lr = base_lr * gamma ** epoch``."""

    _settings = ("gamma",)

    def __init__(self, optimizer: Optimizer, gamma: float):
        self.gamma = checks.number("gamma", gamma, 0.0)
        super().__init__(optimizer)

    def lr_at(self, epoch):
        return [base * self.gamma ** epoch for base in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """``lr = eta_min + (base_lr - eta_min) (1 + cos(pi epoch / T_max)) / 2`` [Loshchilov & Hutter 2017, eqn 5].

    Past ``T_max`` the cosine keeps going (the rate rises again), as in PyTorch.
    """

    _settings = ("T_max", "eta_min")

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0):
        self.T_max, self.eta_min = checks.integer("T_max", T_max, 1), checks.number("eta_min", eta_min, 0.0)
        super().__init__(optimizer)

    def lr_at(self, epoch):
        cos = (1 + math.cos(math.pi * epoch / self.T_max)) / 2
        return [self.eta_min + (base - self.eta_min) * cos for base in self.base_lrs]


class LinearWarmup(LRScheduler):
    """Ramp linearly from ``start_factor * base_lr`` to ``base_lr`` over ``warmup_steps``, then hand over.

    ``lr = base_lr * (start_factor + (1 - start_factor) * epoch / warmup_steps)`` while
    ``epoch < warmup_steps`` [Goyal et al. 2017, sec. 2.2]; afterwards ``after`` (a schedule built on the
    same optimizer *before* this one) runs from its own epoch 0, or the rate stays at ``base_lr``.
    Equals torch's ``SequentialLR([LinearLR(...), after], milestones=[warmup_steps])``.
    """

    _settings = ("warmup_steps", "start_factor")

    def __init__(self, optimizer: Optimizer, warmup_steps: int, after: LRScheduler | None = None,
                 start_factor: float = 0.1):
        self.warmup_steps = checks.integer("warmup_steps", warmup_steps, 1)
        self.start_factor = checks.number("start_factor", start_factor, 0.0, 1.0)
        if after is not None and (not isinstance(after, LRScheduler) or after.optimizer is not optimizer):
            got = "one on another optimizer" if isinstance(after, LRScheduler) else type(after).__name__
            raise ValueError(f"after: expected a schedule built on the same optimizer, got {got}")
        self.after = after
        super().__init__(optimizer)

    def lr_at(self, epoch):
        if epoch < self.warmup_steps:
            factor = self.start_factor + (1 - self.start_factor) * epoch / self.warmup_steps
            return [base * factor for base in self.base_lrs]
        return self.after.lr_at(epoch - self.warmup_steps) if self.after is not None else list(self.base_lrs)

    def step(self) -> None:
        super().step()
        if self.after is not None and self.last_epoch >= self.warmup_steps:  # keep the wrapped clock in step
            self.after.last_epoch, self.after._last_lr = self.last_epoch - self.warmup_steps, self.get_last_lr()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "after": self.after.state_dict() if self.after is not None else None}

    def load_state_dict(self, state: dict) -> None:
        if (state["after"] is None) != (self.after is None):
            raise ValueError("state: a warmup saved with and loaded without a following schedule, or the reverse")
        super().load_state_dict(state)
        if self.after is not None:
            self.after.load_state_dict(state["after"])


SCHEDULES = {"step": StepLR, "exponential": ExponentialLR, "cosine": CosineAnnealingLR, "warmup": LinearWarmup}
