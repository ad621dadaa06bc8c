"""The one training step: forward and loss, backward, loss scaling, clipping, the optimizer's update.

``fit``, the asynchronous strategies (which only need the gradient: their update is the shared store's) and
every in situ learner run their minibatches through a :class:`TrainStep`, so mixed precision, loss scaling,
data-parallel exchange and gradient clipping behave the same wherever a network learns.

Order of one step (Micikevicius et al. 2018, sec. 3; Horovod's ``synchronize`` before clipping):
zero the gradients; forward and loss under ``policy.autocast()``; backward of the (scaled) loss; a
data-parallel optimizer's exchange; unscale and check for overflow; clip the (global) gradient norm; the
optimizer's update, skipped on overflow; rounding of the parameters for pure low-precision policies.
"""
from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np

from .. import checks
from ..amp import DynamicLossScaler, get_policy
from ..autograd import Tensor
from ..optim.clip import clip_grad_norm_

MAX_CONSECUTIVE_SKIPS = 30  # a loss scaler that skips this many steps in a row is not fixing an overflow


@dataclasses.dataclass
class StepResult:
    """What one step did: the minibatch ``loss`` (None if not finite under a loss scaler), the model's
    output ``out`` (a Tensor; None with it), and ``stepped``: True (updated), False (skipped for an
    overflow) or None (a data-parallel optimizer still accumulating backward passes)."""

    loss: float | None
    out: Tensor | None
    stepped: bool | None


class TrainStep:
    """One optimisation step of ``model`` on a minibatch, in a precision policy, with optional loss scaling
    and gradient-norm clipping.

    Args:
        model: an ``nn.Module``.
        loss_fn: ``loss_fn(out, y) -> Tensor`` (0-d).
        optimizer: an hpcai Optimizer (or a DistributedOptimizer); None for :meth:`gradient` only.
        policy: a precision policy or its name.
        scaler: a DynamicLossScaler, None (the policy's default: dynamic scaling for mixed-fp16) or False.
        clip_norm: clip the gradients' joint 2-norm to this (after the data-parallel exchange and unscaling).
        where: a name for error messages (``"fit"``, ``"learner"``).
    """

    def __init__(self, model, loss_fn, optimizer=None, policy="fp32", scaler=None, clip_norm=None,
                 where: str = "train"):
        self.model, self.loss_fn, self.optimizer, self.where = model, loss_fn, optimizer, where
        self.policy = get_policy(policy) if isinstance(policy, str) else policy
        if scaler is None:
            scaler = DynamicLossScaler() if self.policy.loss_scaling else None
        elif scaler is False:
            scaler = None
        elif not isinstance(scaler, DynamicLossScaler):
            raise TypeError(f"loss_scaler: expected a DynamicLossScaler, None or False, got {type(scaler).__name__}")
        self.scaler = scaler
        if scaler is not None and getattr(optimizer, "error_feedback", False) and optimizer.loss_scaler is None:
            optimizer.loss_scaler = scaler  # a DistributedOptimizer's kept errors follow this step's loss scale
        self.clip_norm = None if clip_norm is None else checks.number("clip_norm", clip_norm, 0.0, low_open=True)
        self.params = model.parameters()
        self.steps = self.skipped = self.consecutive_skips = 0

    def _forward(self, x, y):
        with self.policy.autocast():
            out = self.model(x if isinstance(x, Tensor) else Tensor(x))
            loss = self.loss_fn(out, y if isinstance(y, Tensor) else Tensor(y))
        return out, loss, float(loss.item())

    def gradient(self, x, y) -> tuple[float, Tensor]:
        """(loss, output) after a forward and an unscaled backward pass; the gradients are left in ``p.grad``.

        A non-finite loss raises FloatingPointError naming the step (its gradient would poison the weights).
        """
        for p in self.params:
            p.grad = None
        try:
            out, loss, value = self._forward(x, y)
            if not math.isfinite(value):
                raise FloatingPointError(f"the minibatch loss is {value}")
        except FloatingPointError as e:
            raise FloatingPointError(f"{self.where}: {e}; the weights diverged (lower the learning rate) or the "
                                     "data hold NaN or inf") from None
        loss.backward()
        return value, out

    def __call__(self, x, y, label: str = "") -> StepResult:
        """One step on (x, y); ``label`` says where it happened, for error messages."""
        opt, scaler = self.optimizer, self.scaler
        if opt is None:
            raise RuntimeError(f"{self.where}: this TrainStep has no optimizer; use gradient()")
        opt.zero_grad()
        self.steps += 1
        at = f" at {label}" if label else ""
        try:
            out, loss, value = self._forward(x, y)
            if not math.isfinite(value):
                raise FloatingPointError(f"the loss is {value}")
        except FloatingPointError as e:
            if scaler is None:
                raise FloatingPointError(f"{self.where}: non-finite loss{at}: {e}") from None
            # the scaler can only fix overflowing gradients: a non-finite forward loss is the data or the model
            warnings.warn(f"{self.where}: step skipped{at}: {e} before any loss scaling (the data may hold NaN "
                          "or inf, or the model's activations overflow)", RuntimeWarning, stacklevel=2)
            out = loss = value = None
        sync = getattr(opt, "synchronize", None)  # a data-parallel optimizer's gradient exchange
        if loss is not None:
            with np.errstate(over="ignore", invalid="ignore"):  # an fp16 overflow is the scaler's to handle
                (scaler.scale_loss(loss) if scaler is not None else loss).backward()
        elif sync is not None:
            # every rank joins the exchange, so all skip together: this rank's share is NaN
            for p in self.params:
                p.grad = p.xp.full_like(p.data, np.nan)
        stepped = self._update(opt, sync, loss is not None)
        if stepped:
            self.policy.round_parameters(self.params)
            self.consecutive_skips = 0
        elif stepped is False:
            self.skipped += 1
            self.consecutive_skips += 1
            if self.consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
                raise FloatingPointError(
                    f"{self.where}: the loss scaler skipped {self.consecutive_skips} steps in a row up to "
                    f"{label or 'now'} (scale now {scaler.scale:g}): the loss or its gradients are not finite "
                    "even at a small scale")
        return StepResult(value, out, stepped)

    def _update(self, opt, sync, have_grads: bool):
        """Exchange, unscale, clip and step; True / False (skipped) / None (still accumulating)."""
        if sync is None and not have_grads:  # a lone rank with a non-finite loss: nothing to exchange
            self.scaler.update(False)
            return False
        if sync is not None and not sync():
            return None
        finite = self.scaler.unscale(self.params) if self.scaler is not None else True
        if finite and self.clip_norm is not None:
            clip_grad_norm_(self.params, self.clip_norm)
        if finite:
            opt.step()
        if self.scaler is not None:
            self.scaler.update(finite)
        return finite
