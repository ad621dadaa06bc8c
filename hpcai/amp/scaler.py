"""Dynamic loss scaling: keep fp16 gradients above underflow without letting them overflow.

The loss is multiplied by ``scale`` before backward, so small gradients survive in fp16; the gradients
are divided by it again before the step. A step whose gradients hold inf/NaN is skipped and the scale
halved; after ``growth_interval`` good steps in a row it is doubled (Micikevicius et al. 2018, sec. 3.2).
"""
from __future__ import annotations


class DynamicLossScaler:
    """Loss scaling with skip-on-overflow; use ``scale_loss``, then ``step(optimizer)`` in place of ``optimizer.step()``."""

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, enabled: bool = True):
        if not init_scale > 0:
            raise ValueError(f"init_scale: expected a positive number, got {init_scale!r}")
        if not growth_factor > 1 or not 0 < backoff_factor < 1:
            raise ValueError(f"growth_factor must be > 1 and backoff_factor in (0, 1), got {growth_factor!r} "
                             f"and {backoff_factor!r}")
        if not isinstance(growth_interval, int) or growth_interval < 1:
            raise ValueError(f"growth_interval: expected a positive integer, got {growth_interval!r}")
        self.scale, self.enabled = float(init_scale) if enabled else 1.0, bool(enabled)
        self.growth_factor, self.backoff_factor, self.growth_interval = growth_factor, backoff_factor, growth_interval
        self.good_steps = 0
        self.skipped_steps = 0

    def scale_loss(self, loss):
        """``loss * scale`` (the loss itself when disabled)."""
        return loss * self.scale if self.enabled else loss

    def unscale(self, params) -> bool:
        """Divide gradients by the scale in place; return True if all of them are finite."""
        finite = True
        for p in params:
            if p.grad is None:
                continue
            if self.enabled:
                p.grad *= 1.0 / self.scale
            finite = finite and bool(p.xp.isfinite(p.grad).all())
        return finite

    def step(self, optimizer, params=None) -> bool | None:
        """Unscale, then step ``optimizer`` unless a gradient overflowed; update the scale.

        Returns True when it stepped, False when the step was skipped for an overflow, and None while a
        data-parallel optimizer is still accumulating backward passes. Such an optimizer exchanges its
        gradients first (``synchronize``), so every rank sees the same gradients and skips or steps alike.
        """
        params = params if params is not None else [p for g in optimizer.param_groups for p in g["params"]]
        synchronize = getattr(optimizer, "synchronize", None)
        if synchronize is not None and not synchronize():
            return None
        finite = self.unscale(params)
        if finite:
            optimizer.step()
        self.update(finite)
        return finite

    def update(self, finite: bool) -> None:
        """Adjust the scale after a step whose gradients were (not) finite."""
        if not self.enabled:
            return
        if not finite:
            self.scale *= self.backoff_factor
            self.good_steps = 0
            self.skipped_steps += 1
            return
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            self.scale *= self.growth_factor
            self.good_steps = 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "good_steps": self.good_steps, "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.good_steps = float(state["scale"]), int(state["good_steps"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
