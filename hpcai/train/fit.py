"""fit, evaluate, predict: the Keras-like training loop over hpcai models, optimizers and precision policies.

Each minibatch is one :class:`~hpcai.train.step.TrainStep` (forward and loss under the precision
policy, backward of the scaled loss, exchange, unscale, clip, update skipped on overflow, rounding).
Callbacks do everything else (progress, logs, schedules, checkpoints, early stopping, plots). ``comm`` (anything with ``rank``, ``size`` and
``average(value)``) is the hook for data parallelism: fit shards the data it batches itself, averages
the epoch's metrics over ranks before reporting, and lets only rank 0 print, write and plot. Gradient
averaging belongs to the (data-parallel) optimizer, not here.
"""
from __future__ import annotations

import time

import numpy as np

from .. import backend
from ..amp import get_policy
from ..autograd import Tensor, no_grad
from ..ops import loss as _losses
from .callbacks import Callback, History, ProgressBar
from .checkpoint import load_checkpoint
from .data import DataLoader, as_loader
from .metrics import get_metric
from .step import TrainStep

LOSSES = {"cross_entropy": _losses.cross_entropy, "mse": _losses.mse_loss, "l1": _losses.l1_loss,
          "huber": _losses.huber_loss}


def get_loss(loss):
    """A loss callable ``(pred, target) -> scalar Tensor`` from a name in ``LOSSES`` or a callable."""
    if callable(loss):
        return loss
    name = loss[:-5] if isinstance(loss, str) and loss.endswith("_loss") else loss
    if name not in LOSSES:
        raise ValueError(f"loss: expected a callable or one of {sorted(LOSSES)}, got {loss!r}")
    fn = LOSSES[name]
    return lambda pred, target: fn(pred, target, check_finite=False)


def _get_optimizer(optimizer, model, lr):
    from ..optim import Optimizer, get_optimizer
    if isinstance(optimizer, Optimizer):
        if lr is not None:
            raise ValueError("lr: give the learning rate to the optimizer you pass, or pass the optimizer by name")
        return optimizer
    if isinstance(optimizer, str):
        return get_optimizer(optimizer, model.parameters(), **({} if lr is None else {"lr": lr}))
    raise TypeError(f"optimizer: expected an hpcai Optimizer or a name, got {type(optimizer).__name__}")


def _model_array(model):
    """A floating-point parameter (or None): its dtype and device are what inputs are converted to."""
    return next((p.data for p in model.parameters() if p.dtype.kind == "f"), None)


def _to_model(a, like):
    """A batch array on the model's device, floats in the model's dtype; integer labels stay integers."""
    if like is None:
        return a
    if a.dtype.kind == "f" and a.dtype != like.dtype:
        a = a.astype(like.dtype)
    return backend.to_device(a, backend.device_of(like))


def _split(batch):
    if len(batch) != 2:
        raise ValueError(f"data: expected batches of (inputs, targets), got {len(batch)} array(s) per batch")
    return batch


class _Averager:
    """Sample-weighted running means of the loss and the metrics."""

    def __init__(self):
        self.sums, self.count = {}, 0

    def add(self, n, values: dict):
        self.count += n
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + n * v

    def means(self, prefix="") -> dict:
        return {prefix + k: s / max(self.count, 1) for k, s in self.sums.items()}


def _batch_values(loss_value, out, y, metrics) -> dict:
    values = {"loss": loss_value}
    values.update((name, fn(out.data, y)) for name, fn in metrics)
    return values


class Loop:
    """The state of one fit run, which every callback sees as ``callback.loop``.

    ``epoch`` counts completed epochs (during an epoch: its 0-based index), ``step`` optimizer steps
    attempted in total, ``epoch_steps`` those of the current epoch, ``skipped_steps`` those a loss scaler
    skipped. ``stop_training`` is true once any callback asked to stop.
    """

    def __init__(self, train_step, loader, validation, metrics, callbacks, epochs, rank, comm):
        self.train_step = train_step
        self.model, self.loss_fn, self.optimizer = train_step.model, train_step.loss_fn, train_step.optimizer
        self.policy, self.scaler = train_step.policy, train_step.scaler
        self.loader, self.validation, self.metrics = loader, validation, metrics
        self.callbacks = sorted(callbacks, key=lambda cb: cb.order)
        self.epochs, self.rank, self.comm = epochs, rank, comm
        self.epoch = self.step = self.epoch_steps = self.skipped_steps = 0
        self.history = History()

    @property
    def stop_training(self) -> bool:
        return any(cb.stop_training for cb in self.callbacks)

    def call(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(*args)

    def reduce(self, logs: dict) -> dict:
        """``logs`` averaged over ranks through ``comm`` (unchanged without one)."""
        if self.comm is None or getattr(self.comm, "size", 1) == 1:
            return logs
        return {k: (float(self.comm.average(v)) if isinstance(v, float) else v) for k, v in logs.items()}

    @property
    def lr(self):
        return float(self.optimizer.param_groups[0]["lr"])

    def train_epoch(self, epoch: int) -> dict:
        like = _model_array(self.model)
        self.model.train()
        avg = _Averager()
        self.epoch_steps = 0
        for i, batch in enumerate(self.loader):
            x, y = (_to_model(a, like) for a in _split(batch))
            result = self.train_step(x, y, f"epoch {epoch + 1}, step {i + 1} (global step {self.step + 1})")
            self.step += 1
            self.epoch_steps += 1
            if result.stepped is False:
                self.skipped_steps += 1
            if result.out is not None:
                avg.add(len(y), _batch_values(result.loss, result.out, y, self.metrics))
            self.call("on_batch_end", i, avg.means())
            if self.stop_training:
                break
        logs = avg.means()
        if self.scaler is not None:
            logs["skipped_steps"] = self.skipped_steps
        return logs


def fit(model, train_data, loss, optimizer, epochs: int = 1, batch_size: int = 32, validation=None, metrics=(),
        callbacks=(), verbose: int = 1, seed: int = 0, precision="fp32", loss_scaler=None, shuffle: bool = True,
        lr: float | None = None, drop_last: bool = False, resume_from=None, rank: int = 0, comm=None,
        clip_norm: float | None = None) -> History:
    """Train ``model`` for ``epochs`` epochs (the total: a resumed run continues up to it); return the History.

    Args:
        train_data: a DataLoader (used as is), a Dataset or an ``(x, y)`` tuple (batched and shuffled with
            a Generator seeded by ``seed``; sharded over ``comm``'s ranks).
        loss: a callable ``(pred, target) -> scalar Tensor`` or a name in ``LOSSES``.
        optimizer: an :class:`hpcai.optim.Optimizer`, or a name in ``hpcai.optim.OPTIMIZERS`` (with ``lr``).
        validation: data evaluated after each epoch (``val_loss``, ``val_<metric>``).
        metrics: names ("accuracy", "top5", "mae", "mse") or callables ``(pred, target) -> float``.
        verbose: 0 silent, 1 a progress bar per epoch (a ProgressBar is added unless one is given), 2 a line.
        precision: a policy name ("fp64", "fp32", "bf16", "fp16", "mixed-bf16", "mixed-fp16") or Policy; the
            model is cast to it first.
        loss_scaler: a DynamicLossScaler, None (the policy's default: dynamic scaling for mixed-fp16) or False.
        clip_norm: clip the gradients' joint 2-norm to this before each update (after the data-parallel
            exchange and unscaling), as Keras' ``clipnorm``; None: no clipping.
        resume_from: a checkpoint written by ModelCheckpoint to continue from.
        rank, comm: see the module docstring; ``comm.rank`` overrides ``rank``.
    """
    policy = get_policy(precision)
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ValueError(f"epochs: expected a non-negative integer, got {epochs!r}")
    metric_fns = [get_metric(m) for m in metrics]
    loss_fn = get_loss(loss)
    rank = comm.rank if comm is not None else rank
    policy.prepare(model)
    opt = _get_optimizer(optimizer, model, lr)
    train_step = TrainStep(model, loss_fn, opt, policy, loss_scaler, clip_norm, where="fit")
    loader = as_loader(train_data, batch_size, shuffle, drop_last, seed)
    if comm is not None and not isinstance(train_data, DataLoader) and comm.size > 1:
        loader.shard(comm.rank, comm.size)
    if len(loader) == 0:
        raise ValueError(f"train_data: expected at least one batch, got none ({len(loader.dataset)} samples, "
                         f"batch_size {batch_size}{', drop_last' if drop_last else ''})")
    val_loader = as_loader(validation, batch_size, shuffle=False) if validation is not None else None
    callbacks = list(callbacks)
    bad = [type(cb).__name__ for cb in callbacks if not isinstance(cb, Callback)]
    if bad:
        raise TypeError(f"callbacks: expected Callback instances, got {bad}")
    if verbose and not any(isinstance(cb, ProgressBar) for cb in callbacks):
        callbacks.insert(0, ProgressBar(verbose))
    loop = Loop(train_step, loader, val_loader, metric_fns, callbacks, int(epochs), rank, comm)
    for cb in loop.callbacks:
        cb.set_loop(loop)
    loop.call("on_train_begin", {})
    resume = resume_from if resume_from is not None else next(
        (p for p in (cb.resume_path() for cb in loop.callbacks) if p is not None), None)
    if resume is not None:
        load_checkpoint(resume, loop)
    logs = {}
    for epoch in range(loop.epoch, loop.epochs):
        loop.epoch = epoch
        loop.call("on_epoch_begin", epoch, {})
        t0 = time.perf_counter()
        logs = loop.train_epoch(epoch)
        if val_loader is not None:
            logs.update(_evaluate(model, val_loader, loss_fn, metric_fns, policy, prefix="val_"))
        logs = loop.reduce({**logs, "lr": loop.lr, "time": time.perf_counter() - t0})
        loop.epoch = epoch + 1
        loop.history.append(epoch + 1, logs)
        loop.call("on_epoch_end", epoch, logs)
        if loop.stop_training:
            break
    loop.call("on_train_end", logs)
    return loop.history


def _evaluate(model, loader, loss_fn, metrics, policy, prefix=""):
    like, avg = _model_array(model), _Averager()
    was_training = model.training
    model.eval()
    try:
        with no_grad(), policy.autocast():
            for batch in loader:
                x, y = (_to_model(a, like) for a in _split(batch))
                out = model(Tensor(x))
                avg.add(len(y), _batch_values(float(loss_fn(out, Tensor(y)).item()), out, y, metrics))
    finally:
        model.train(was_training)
    return avg.means(prefix)


def evaluate(model, data, loss="cross_entropy", metrics=(), batch_size: int = 256, precision="fp32") -> dict:
    """Mean loss and metrics of ``model`` (in eval mode, without gradients) over ``data``: ``{"loss": ...}``.

    ``precision`` only chooses the autocast compute precision; the model is not cast.
    """
    policy = get_policy(precision)
    loader = as_loader(data, batch_size, shuffle=False)
    return _evaluate(model, loader, get_loss(loss), [get_metric(m) for m in metrics], policy)


def predict(model, x, batch_size: int = 256, precision="fp32") -> np.ndarray:
    """The model's outputs for inputs ``x`` (eval mode, no gradients), as one host array."""
    policy = get_policy(precision)
    x = x.data if isinstance(x, Tensor) else x
    loader = DataLoader((x,), batch_size, shuffle=False)
    like, outs = _model_array(model), []
    was_training = model.training
    model.eval()
    try:
        with no_grad(), policy.autocast():
            for (xb,) in loader:
                outs.append(backend.to_host(model(Tensor(_to_model(xb, like))).data))
    finally:
        model.train(was_training)
    return np.concatenate(outs) if outs else np.empty((0,))
