"""Digits: a handwritten-digit classifier trained in any precision, with any optimizer and parallel strategy.

The quickstart application: small enough to finish in seconds on a laptop, big enough to show the
trade-offs the platform is about. scikit-learn's 1797 digits (8x8 images, no download) are split 80/20;
an MLP or a small CNN learns them with

* ``strategy="sync"``: synchronous data parallel (:class:`~hpcai.parallel.DistributedOptimizer`: gradients
  averaged by allreduce every step, Horovod-style) with any optimizer and precision policy;
* ``"hogwild"``, ``"ps"``, ``"rma"``: asynchronous SGD (:func:`~hpcai.parallel.train_async`: threads sharing
  weights lock-free, a parameter server on rank 0, one-sided MPI windows) -- plain SGD on full-precision
  shared weights, which is what these methods are.

``straggler`` slows worker 1 down by that factor, to see synchronous training wait for it and
asynchronous training not. Results: test accuracy, the loss curve, per-class accuracy and a confusion matrix.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time

import numpy as np

from .. import amp, datasets, io, nn, optim
from ..parallel.asynchronous import ASYNC_PRECISIONS, METHODS, async_precision_problem, train_async
from ..parallel.comm import default_comm
from ..train import Callback, evaluate, fit, predict
from ..train.plot import new_figure, save_png
from .fields import check_fields
from .progress import FitProgress, as_progress
from .result import Result

MODELS = ("mlp", "cnn")


@dataclasses.dataclass
class Config:
    """What to train, in which precision, with which optimizer and parallel strategy."""

    model: str = dataclasses.field(default="mlp", metadata={"choices": MODELS, "help": (
        "the network: an MLP (fully connected, fastest) or a small CNN (convolutions, more accurate per epoch)")})
    hidden: int = dataclasses.field(default=128, metadata={
        "low": 1, "high": 4096, "help": "network size: the MLP's hidden width, or the CNN's channels in its "
        "second convolution; larger learns more but runs slower"})
    precision: str = dataclasses.field(default="fp32", metadata={"choices": tuple(amp.POLICIES), "help": (
        "number format of the arithmetic: fp32/fp64 full precision; fp16/bf16 and mixed-* emulate tensor-core "
        "half precision, to see what it costs in accuracy")})
    optimizer: str = dataclasses.field(default="adam", metadata={"choices": tuple(optim.OPTIMIZERS), "help": (
        "the update rule (adam is a robust default; the asynchronous strategies need sgd)")})
    strategy: str = dataclasses.field(default="sync", metadata={"choices": tuple(METHODS), "help": (
        "how workers share the training: sync averages gradients every step (allreduce); hogwild, ps "
        "(parameter server) and rma (one-sided MPI) update shared weights without waiting for each other")})
    epochs: int = dataclasses.field(default=20, metadata={
        "low": 1, "high": 10_000, "help": "passes over the training set (all workers together); more: "
        "higher accuracy, longer run"})
    batch_size: int = dataclasses.field(default=32, metadata={
        "low": 1, "high": 1437, "unit": "images", "help": "images per step on each worker; larger steps are "
        "faster per image but fewer"})
    lr: float | None = dataclasses.field(default=None, metadata={
        "low": 0.0, "low_open": True, "high": 100.0,
        "help": "learning rate: how far each step moves the weights; None: a good default for the optimizer"})
    straggler: float = dataclasses.field(default=1.0, metadata={
        "low": 1.0, "high": 100.0, "unit": "x", "help": "worker 1 takes this many times longer per step (1: no "
        "straggler), to see synchronous training wait for a slow node and asynchronous training not"})
    seed: int = dataclasses.field(default=0, metadata={
        "low": 0, "high": 2**32 - 1, "help": "random seed of the data split, the initial weights and the "
        "batches: sync training repeats exactly with the same seed, settings, workers and BLAS threads "
        "(OMP_NUM_THREADS=1 makes the panel, the CLI and a notebook agree); the asynchronous strategies depend "
        "on timing too"})
    output_dir: str | None = dataclasses.field(default=None, metadata={
        "path": True, "help": "folder for metrics.json and the figures (None: nothing written)"})

    def validate(self) -> "Config":
        """Check every field, raising a ValueError that names it."""
        check_fields(self)
        if self.strategy != "sync":
            if self.optimizer != "sgd":
                raise ValueError(f"optimizer: the asynchronous strategy {self.strategy!r} applies plain SGD "
                                 f"updates to shared weights; expected 'sgd', got {self.optimizer!r}")
            if async_precision_problem(self.precision):
                raise ValueError(f"precision: not with the asynchronous strategy {self.strategy!r}: "
                                 f"{async_precision_problem(self.precision)}; expected one of "
                                 f"{list(ASYNC_PRECISIONS)}, got {self.precision!r}")
        return self


# what each metric of the Result is: {name: (group, unit)}; "" is a plain number (a fraction, a loss, a name)
METRICS = {"test_accuracy": ("accuracy", ""), "test_loss": ("accuracy", ""),
           "final_training_loss": ("training", ""), "staleness_mean": ("training", "updates"),
           "staleness_max": ("training", "updates"), "seconds": ("timing", "s"), "workers": ("run", "workers"),
           "strategy": ("run", ""), "precision": ("run", ""), "optimizer": ("run", ""), "lr": ("run", "")}


LEARNING_RATES = {"sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "lars": 0.05}  # others: 3e-3


def build_model(config: Config, seed: int | None = None) -> nn.Module:
    """The network ``config`` trains: an MLP or a small CNN on (N, 1, 8, 8) images (``seed``: config.seed)."""
    h, seed = config.hidden, config.seed if seed is None else seed
    if config.model == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(64, h, rng=seed), nn.ReLU(), nn.Linear(h, 10, rng=seed + 1))
    return nn.Sequential(nn.Conv2d(1, h // 2 or 1, 3, padding=1, rng=seed), nn.ReLU(),
                         nn.Conv2d(h // 2 or 1, h, 3, padding=1, rng=seed + 1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(h * 16, 10, rng=seed + 2))


def example_batch(config: Config, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random inputs of the shape :func:`build_model`'s network takes: (n, 1, 8, 8) in [0, 1)."""
    return rng.random((n, 1, 8, 8))


def run(config: Config | None = None, verbose: int = 1, comm=None, progress=None, **overrides) -> Result:
    """Train and evaluate; every rank of ``comm`` (default: MPI's world under mpiexec) returns the same Result.

    ``progress``: a :class:`~hpcai.apps.progress.Progress` or a callable receiving its snapshots.
    """
    config = dataclasses.replace(config or Config(), **overrides).validate()
    progress = as_progress(progress)
    if comm is None and METHODS[config.strategy].mpi:
        comm = default_comm()  # MPI's world under mpiexec; hogwild's threads need no communicator
    rank, size = (comm.rank, comm.size) if comm is not None else (0, 1)
    (xtr, ytr), (xte, yte) = datasets.digits(seed=config.seed)
    lr = config.lr or LEARNING_RATES.get(config.optimizer, 3e-3)
    # workers: Hogwild's threads; the ranks, but for the parameter server's rank 0 (with more than one rank)
    workers = 2 if config.strategy == "hogwild" else size - 1 if config.strategy == "ps" and size > 1 else size
    delay = {1: config.straggler} if config.straggler > 1 and workers > 1 else None
    start = time.perf_counter()
    if config.strategy == "sync":
        model, history = _train_sync(config, lr, (xtr, ytr), comm, delay, progress, verbose)
        losses, curve_x, x_label = np.asarray(history["loss"]), np.arange(1, len(history["loss"]) + 1), "epoch"
    else:
        steps = math.ceil(config.epochs * len(xtr) / config.batch_size)
        # each process reports the updates of the workers it runs (all threads; one rank), against their share
        local = workers if config.strategy == "hogwild" else 1
        server = config.strategy == "ps" and size > 1 and rank == 0
        progress.phase(f"training ({config.strategy})", 0 if server else math.ceil(steps * local / workers))
        result = train_async(config.strategy, lambda: build_model(config), (xtr, ytr), lr=lr, steps=steps,
                             batch_size=config.batch_size, comm=comm, threads=workers, delay=delay,
                             seed=config.seed, precision=config.precision,
                             progress=lambda worker, updates, loss: progress.update(loss=loss))  # one call per update
        model, losses, curve_x, x_label = result.model, result.losses, result.times, "seconds"
        history = {"staleness_mean": result.staleness_mean, "staleness_max": result.staleness_max}
    seconds = time.perf_counter() - start
    scores = evaluate(model, (xte, yte), "cross_entropy", metrics=["accuracy"], precision=config.precision)
    predicted = np.argmax(predict(model, xte, precision=config.precision), axis=1)
    confusion = np.zeros((10, 10), np.int64)
    np.add.at(confusion, (yte, predicted), 1)
    metrics = {"test_accuracy": float(scores["accuracy"]), "test_loss": float(scores["loss"]),
               "final_training_loss": float(losses[-1]), "seconds": seconds, "workers": workers,
               "strategy": config.strategy, "precision": config.precision, "optimizer": config.optimizer, "lr": lr}
    if config.strategy != "sync":
        metrics.update({k: float(v) for k, v in history.items()})
    arrays = {"loss": np.asarray(losses), "loss_x": np.asarray(curve_x), "confusion": confusion}
    result = Result(metrics, arrays)
    progress.finish(f"test accuracy {metrics['test_accuracy']:.3f}")
    if rank == 0 and verbose:
        print(f"digits: {config.model} with {config.optimizer} (lr {lr:g}), {config.precision}, "
              f"{METHODS[config.strategy].description} on {workers} worker(s): test accuracy "
              f"{metrics['test_accuracy']:.4f} in {seconds:.1f} s", flush=True)
    if config.output_dir is not None and rank == 0:
        _write(config, result, x_label)
    if comm is not None and size > 1:
        result.figures, result.files = comm.bcast_obj((result.figures, result.files))
    return result


def _train_sync(config, lr, data, comm, delay, progress, verbose):
    from ..parallel.data_parallel import DistributedOptimizer, broadcast_optimizer_state, broadcast_parameters
    model = build_model(config)
    opt = optim.get_optimizer(config.optimizer, model.parameters(), lr=lr)
    callbacks = []
    if comm is not None and comm.size > 1:
        opt = DistributedOptimizer(opt, comm=comm)
        broadcast_parameters(model, 0, comm)
        broadcast_optimizer_state(opt, 0, comm)
        if delay and comm.rank in delay:
            callbacks.append(_Straggle(delay[comm.rank]))
    steps_per_epoch = math.ceil(len(data[0]) / (config.batch_size * (comm.size if comm is not None else 1)))
    progress.phase("training (sync)", config.epochs * steps_per_epoch)
    callbacks.append(FitProgress(progress, steps_per_epoch))
    history = fit(model, data, "cross_entropy", opt, epochs=config.epochs, batch_size=config.batch_size,
                  metrics=["accuracy"], callbacks=callbacks, verbose=0, seed=config.seed,
                  precision=config.precision, comm=comm)
    return model, history


class _Straggle(Callback):
    """Sleep after each step so this rank takes ``factor`` times its own step time (a slow node)."""

    def __init__(self, factor):
        self.factor, self.last = factor, None

    def on_batch_end(self, step, logs=None):
        now = time.perf_counter()
        if self.last is not None:
            time.sleep((self.factor - 1) * (now - self.last))
        self.last = time.perf_counter()


def _write(config: Config, result: Result, x_label: str) -> None:
    """metrics.json and two figures (loss curve, confusion matrix) in ``config.output_dir``."""
    os.makedirs(config.output_dir, exist_ok=True)
    path = os.path.join(config.output_dir, "metrics.json")
    io.write_json(path, {"config": dataclasses.asdict(config), "metrics": result.metrics})
    result.files["metrics"] = path
    fig = new_figure(figsize=(5, 3.2), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(result.arrays["loss_x"], result.arrays["loss"], marker="o" if len(result.arrays["loss"]) < 30 else None)
    ax.set(xlabel=x_label, ylabel="training loss", yscale="log",
           title=f"{config.model}, {config.optimizer}, {config.precision}, {config.strategy}")
    result.figures["loss"] = save_png(fig, os.path.join(config.output_dir, "loss.png"))
    fig = new_figure(figsize=(4, 3.6), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(result.arrays["confusion"], cmap="Blues")
    ax.set(xlabel="predicted digit", ylabel="true digit", xticks=range(10), yticks=range(10),
           title=f"test accuracy {result.metrics['test_accuracy']:.3f}")
    fig.colorbar(im, ax=ax, shrink=0.8)
    result.figures["confusion"] = save_png(fig, os.path.join(config.output_dir, "confusion.png"))
