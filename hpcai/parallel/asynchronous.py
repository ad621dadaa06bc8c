"""Asynchronous SGD behind one interface, next to the synchronous allreduce baseline it competes with.

Synchronous data-parallel SGD waits every step for the slowest rank and for a global reduction.
Asynchronous SGD lets each worker apply its gradient as soon as it has one, to weights that others
changed meanwhile: the gradient is *stale*. Every variant records, per update, its staleness (updates
by others between reading the weights and applying the gradient), the minibatch losses, and snapshots
of the weights with wall-clock times, so that runs compare by time to a target loss::

    result = train_async("rma", model_fn, (x, y), loss="cross_entropy", lr=0.1, steps=2000)
    result.time_to(0.2), result.staleness_mean, result.model

Variants, registered in :data:`METHODS`: ``"sync"`` (here), ``"hogwild"`` (:mod:`.hogwild`, threads
in one process), ``"ps"`` (:mod:`.parameter_server`, two-sided MPI) and ``"rma"`` (:mod:`.rma`,
one-sided MPI); Hogwild and RMA run one update algorithm (:func:`update`), each over its own
:class:`Store` of the weights. ``steps`` counts updates applied to the shared weights by all workers
together; ``lr`` (a number or a schedule ``lr(t)``) is evaluated at t = the updates applied when the
worker read the weights. Parameters live in host memory as one flat array of the model's dtype.
"""
from __future__ import annotations

import importlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Protocol

import numpy as np

from .. import backend, checks
from ..amp.policy import POLICIES, get_policy
from ..nn.module import Module
from ..autograd import no_grad
from ..autograd.tensor import Tensor
from ..train import TrainStep, get_loss
from ..train.data import DataLoader
from .comm import SerialCommunicator, world


def async_precision_problem(precision: str) -> str | None:
    """Why asynchronous updates cannot train in amp policy ``precision`` (None when they can): the one rule,
    read by :func:`train_async`, the applications' Config checks and the panel (which offers only what passes)."""
    policy = get_policy(precision)
    if policy.loss_scaling:
        return (f"{policy.name} needs dynamic loss scaling (a step skipped when a gradient overflows), and "
                f"asynchronous workers apply each gradient to the shared weights at once, with no step to skip")
    if policy.pure:
        return (f"{policy.name} rounds the weights themselves to {policy.compute}, and asynchronous updates "
                f"need full-precision shared weights")
    return None


# the amp policies train_async accepts: full-precision shared weights, no loss scaling
ASYNC_PRECISIONS = tuple(name for name in POLICIES if async_precision_problem(name) is None)


@dataclass(frozen=True)
class Method:
    """A registered variant: ``run(job) -> (this rank's logs, final flat weights, wall seconds)``.

    ``workers(job)``: the worker ids (ranks, or threads) it will run with; ``mpi``: whether it uses ``job.comm``;
    ``description``: what it is, in a few words (the panel, the CLI and applications show it).
    """
    name: str
    run: Callable
    workers: Callable
    mpi: bool
    description: str


METHODS: dict[str, Method] = {}


def register(name: str, description: str, workers: Callable, mpi: bool = True):
    """Decorator adding a variant's ``run(job)`` to :data:`METHODS` under ``name``: the one registry of
    parallel strategies that applications, the panel, the CLI and the tests read."""
    def add(run):
        METHODS[name] = Method(name, run, workers, mpi, description)
        return run
    return add


class FlatModel:
    """A Module whose parameters are views into one flat array, so the whole model moves as one buffer.

    Several FlatModels may view the *same* array (``flat=``): each keeps its own Parameters, graph and
    ``.grad``, while the weights are shared — what Hogwild threads need.
    """

    def __init__(self, module, loss_fn, flat=None, policy="fp32"):
        if not isinstance(module, Module):
            raise TypeError(f"model_fn: expected a function returning a Module, got {type(module).__name__}")
        self.policy = get_policy(policy)
        self.policy.prepare(module)
        self.module, self.loss_fn, self.params = module, loss_fn, module.parameters()
        self.step = TrainStep(module, loss_fn, policy=self.policy, scaler=False, where="loss")
        if not self.params or any(backend.get_array_module(p.data) is not np for p in self.params):
            raise ValueError("model_fn: expected a Module with parameters in host (numpy) memory")
        dtypes = {p.dtype for p in self.params}
        if len(dtypes) != 1:
            raise TypeError(f"model_fn: all parameters must share one dtype, got {sorted(map(str, dtypes))}")
        own = np.concatenate([p.data.ravel() for p in self.params])
        self.flat = own if flat is None else flat
        if self.flat.shape != own.shape or self.flat.dtype != own.dtype:
            raise ValueError(f"flat: expected {own.shape} {own.dtype}, got {self.flat.shape} {self.flat.dtype}")
        start = 0
        for p in self.params:  # rebind each parameter to its slice of the flat array
            p.data, start = self.flat[start:start + p.size].reshape(p.shape), start + p.size

    def gradient(self, x, y):
        """(minibatch loss, flat gradient) at the current weights; the graph is this object's own.

        A non-finite loss raises FloatingPointError: its gradient would poison the weights every worker shares.
        """
        value, _ = self.step.gradient(x, y)
        g = np.concatenate([(p.grad if p.grad is not None else np.zeros(p.shape, p.dtype)).ravel()
                            for p in self.params])
        return value, g

    def loss_at(self, weights, x, y) -> float:
        """The loss on (x, y) with ``weights`` copied in (no graph)."""
        self.flat[...] = weights
        with no_grad(), self.policy.autocast():
            return float(self.loss_fn(self.module(Tensor(x)), Tensor(y)).item())


@dataclass
class WorkerLog:
    """What one worker (``worker`` id; None for a parameter server) saw; merged into an AsyncResult."""
    worker: int | None
    staleness: list = field(default_factory=list)
    batch: list = field(default_factory=list)       # (seconds, minibatch loss) per update
    snapshots: list = field(default_factory=list)   # (seconds, updates applied, flat weights)
    dropped: int = 0                                # gradients discarded as staler than max_staleness
    initial: np.ndarray | None = None               # the starting weights (set by one log per run)
    listener: Callable | None = field(default=None, repr=False)  # the run's ``progress``

    def update(self, staleness: int, seconds: float, loss: float) -> None:
        self.staleness.append(int(staleness))
        self.batch.append((seconds, loss))
        if self.listener is not None:
            self.listener(self.worker, len(self.staleness), loss)


@dataclass
class Job:
    """The validated arguments of :func:`train_async`, with the helpers every variant shares."""
    method: str
    model_fn: Callable
    x: np.ndarray
    y: np.ndarray
    loss_fn: Callable
    lr: Callable
    steps: int
    batch_size: int
    comm: object
    threads: int
    max_staleness: int | None
    delay: dict
    seed: int
    record_every: int
    policy: object = None
    progress: Callable | None = None

    def flat_model(self, flat=None) -> FlatModel:
        return FlatModel(self.model_fn(), self.loss_fn, flat, self.policy or "fp32")

    def log(self, worker: int | None, initial=None) -> WorkerLog:
        """A new log for ``worker`` that tells the run's ``progress`` about every update."""
        return WorkerLog(worker, initial=initial, listener=self.progress)

    def batches(self, worker: int, workers: int):
        """Endless minibatches from this worker's shard, reshuffled every epoch (seeded per run)."""
        loader = DataLoader((self.x, self.y), self.batch_size, shuffle=True, seed=self.seed)
        loader.shard(worker, workers)
        while True:
            yield from loader

    def gradient(self, fm: FlatModel, batches, worker: int):
        """(loss, flat gradient) of ``fm`` on the next minibatch; then a straggler sleeps so that ``worker``
        takes ``delay[worker]`` times its measured compute time per step."""
        x, y = next(batches)
        start = time.perf_counter()
        loss, g = fm.gradient(x, y)
        factor = self.delay.get(worker, 1.0)
        if factor > 1.0:
            time.sleep((factor - 1.0) * (time.perf_counter() - start))
        return loss, g


# -- one asynchronous update, over any store of the shared weights ---------------------------------------
class Store(Protocol):
    """Where asynchronous workers keep the shared flat weights and the count of updates applied to them.

    Hogwild's is an array shared by threads (:mod:`.hogwild`), RMA's an MPI window (:mod:`.rma`).
    """

    def version(self) -> int:
        """Updates applied so far."""

    def read(self, out: np.ndarray) -> np.ndarray:
        """The current weights, copied into ``out`` (nothing to copy if ``out`` *is* the shared array)."""

    def add(self, delta: np.ndarray) -> None:
        """weights += delta (racing with other workers or atomic per element: the store's choice)."""

    def count(self) -> int:
        """Count one more update applied (atomically); returns the count before."""

    def exclusive(self) -> ContextManager:
        """A context in which no other worker adds or counts."""


def update(job: Job, store: Store, fm: FlatModel, batches, worker: int, log: WorkerLog, t0: float) -> None:
    """One SGD update by ``worker``: read the weights, compute a gradient, add ``-lr * g`` to the store.

    Staleness = updates applied by others between reading and applying. With ``max_staleness`` the
    check and the add run under ``store.exclusive()``, so the bound holds exactly; a gradient that is
    too stale is dropped and recomputed on fresh weights.
    """
    bound = job.max_staleness
    seen = store.version()  # the version of the weights this gradient is computed on
    store.read(fm.flat)
    while True:
        loss, g = job.gradient(fm, batches, worker)
        g *= -job.lr(seen)
        if bound is None:
            store.add(g)
            v = store.count()  # counted once it is in the weights, so a reader's version never runs ahead of them
            break
        with store.exclusive():
            v = store.version()
            fresh = v - seen <= bound
            if fresh:
                store.add(g)
                store.count()
        if fresh:
            break
        log.dropped += 1
        seen = v
        store.read(fm.flat)
    now = time.perf_counter() - t0
    log.update(v - seen, now, loss)
    if (v + 1) % job.record_every == 0:
        log.snapshots.append((now, v + 1, store.read(np.empty_like(fm.flat))))


@dataclass
class AsyncResult:
    """A finished run: final weights and model, staleness per update, loss against wall-clock time.

    ``times``/``versions``/``losses``: the full-data loss of weight snapshots (seconds since start,
    updates applied then); ``batch_times``/``batch_losses``: every worker's minibatch losses;
    ``updates``: updates applied per worker id (rank or thread; with "sync" every rank has a part in every
    update). ``model``: a fresh ``model_fn()`` holding the final weights.
    """
    method: str
    steps: int
    wall_time: float
    weights: np.ndarray
    staleness: np.ndarray
    updates: dict
    dropped: int
    times: np.ndarray
    versions: np.ndarray
    losses: np.ndarray
    batch_times: np.ndarray
    batch_losses: np.ndarray
    model: object = field(default=None, repr=False, compare=False)

    staleness_mean = property(lambda self: float(self.staleness.mean()) if self.staleness.size else 0.0)
    staleness_max = property(lambda self: int(self.staleness.max()) if self.staleness.size else 0)
    final_loss = property(lambda self: float(self.losses[-1]))

    def staleness_histogram(self) -> np.ndarray:
        """Counts of updates by staleness: entry k = updates applied k updates late."""
        return np.bincount(self.staleness) if self.staleness.size else np.zeros(1, np.int64)

    def time_to(self, target: float) -> float:
        """Seconds until a snapshot's loss first reached ``target`` (inf if it never did)."""
        hit = np.flatnonzero(self.losses <= target)
        return float(self.times[hit[0]]) if hit.size else math.inf

    def summary(self) -> str:
        return (f"{self.method}: {self.steps} updates in {self.wall_time:.2f} s by {len(self.updates)} workers, "
                f"final loss {self.final_loss:.4f}, staleness mean {self.staleness_mean:.2f} max "
                f"{self.staleness_max}, dropped {self.dropped}")


def _lr_schedule(lr) -> Callable:
    if callable(lr):
        return lr
    lr = checks.number("lr (a number, or a schedule lr(t))", lr, 0.0, low_open=True)
    return lambda t, lr=lr: lr


def _finish(job, logs, weights, wall) -> AsyncResult:
    """Merge every worker's log and evaluate the loss of each weight snapshot on the training data."""
    fm = job.flat_model()
    snaps = sorted((s for log in logs for s in log.snapshots), key=lambda s: (s[0], s[1]))
    initial = next(log.initial for log in logs if log.initial is not None)
    snaps = [(0.0, 0, initial)] + snaps + [(wall, job.steps, weights)]
    batch = sorted(b for log in logs for b in log.batch)
    workers = [log for log in logs if log.worker is not None]
    return AsyncResult(
        method=job.method, steps=job.steps, wall_time=wall, weights=weights,
        staleness=np.array([s for log in workers for s in log.staleness], np.int64),
        updates={log.worker: len(log.staleness) for log in sorted(workers, key=lambda log: log.worker)},
        dropped=sum(log.dropped for log in logs),
        times=np.array([s[0] for s in snaps]), versions=np.array([s[1] for s in snaps]),
        losses=np.array([fm.loss_at(s[2], job.x, job.y) for s in snaps]),
        batch_times=np.array([b[0] for b in batch]), batch_losses=np.array([b[1] for b in batch]))


def train_async(method: str, model_fn: Callable, data, loss="cross_entropy", lr=0.1, steps: int = 1000,
                batch_size: int = 32, comm=None, threads: int = 2, max_staleness: int | None = None,
                delay: dict | None = None, seed: int = 0, record_every: int | None = None, precision="fp32",
                progress: Callable | None = None) -> AsyncResult:
    """Train ``model_fn()`` on ``data = (x, y)`` with one SGD variant; returns the same result on every rank.

    Args:
        method: a name in :data:`METHODS` ("sync", "hogwild", "ps", "rma").
        model_fn: builds the model (called on every rank/thread; rank 0's initial weights are used).
        loss: a name in :data:`hpcai.train.LOSSES` ("cross_entropy", "mse", ...) or a function
            ``loss(prediction, target) -> scalar Tensor``; a non-finite minibatch loss raises FloatingPointError.
        lr: step size, or a schedule ``lr(t) -> float`` of the updates applied so far.
        steps: updates applied to the shared weights by all workers together.
        comm: communicator for the MPI variants (default :func:`world`); hogwild ignores it. Every rank
            must call with the same arguments; an exception on one rank leaves the others waiting, so
            MPI jobs should call :func:`~hpcai.parallel.comm.install_abort_hook` first.
        threads: hogwild's worker threads.
        max_staleness: bound on staleness; a worker whose gradient would be applied later than this
            discards it and recomputes on fresh weights (counted in ``result.dropped``).
        delay: ``{worker: factor}``: that worker sleeps so each of its steps takes factor times its
            compute time (a straggler). Workers are ranks (threads for hogwild).
        record_every: snapshot the weights every this many updates (default steps // 40).
        precision: a policy of :mod:`hpcai.amp` whose master weights stay as they are: "fp64", "fp32" or
            "mixed-bf16" (updates land in the shared fp32 weights; no loss scaling, no rounding of them).
        progress: ``progress(worker, updates by this worker, minibatch loss)``, called by this process
            after each of its workers' updates (from the worker's thread, for hogwild).
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {sorted(METHODS)}, got {method!r}")
    if not callable(model_fn):
        raise TypeError(f"model_fn: expected a function returning a Module, got {type(model_fn).__name__}")
    if not isinstance(data, (tuple, list)) or len(data) != 2 or len(data[0]) != len(data[1]):
        raise ValueError("data: expected a pair (x, y) of arrays with the same first dimension")
    loss_fn = get_loss(loss)  # a name in hpcai.train.LOSSES, or a function
    policy = get_policy(precision)
    if async_precision_problem(policy.name):
        raise ValueError(f"precision: asynchronous updates cannot use it: {async_precision_problem(policy.name)}; "
                         f"expected one of {ASYNC_PRECISIONS}, got {policy.name!r}")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress: expected a function progress(worker, updates, loss), got {progress!r}")
    steps, threads = checks.integer("steps", steps, 1), checks.integer("threads", threads, 1)
    if max_staleness is not None:
        max_staleness = checks.integer("max_staleness", max_staleness, 0)
    spec = METHODS[method]
    comm = SerialCommunicator() if not spec.mpi else comm if comm is not None else world()
    job = Job(method, model_fn, np.asarray(data[0]), np.asarray(data[1]), loss_fn, _lr_schedule(lr), steps,
              checks.integer("batch_size", batch_size, 1), comm, threads, max_staleness, {}, checks.integer("seed", seed, 0),
              checks.integer("record_every", record_every, 1) if record_every is not None else max(1, steps // 40),
              policy, progress)
    ids = list(spec.workers(job))
    if delay is not None and not isinstance(delay, dict):
        raise TypeError(f"delay: expected a dict {{worker: slow-down factor}} or None, got {delay!r}")
    for worker, factor in (delay or {}).items():
        if worker not in ids:
            raise ValueError(f"delay: worker {worker!r} does not exist; {method} here has workers {ids}")
        checks.number(f"delay[{worker}] (a slow-down factor)", factor, 1.0)
    job.delay = {int(k): float(v) for k, v in (delay or {}).items()}
    if len(job.x) < len(ids):
        raise ValueError(f"data: {len(job.x)} samples cannot be shared by {len(ids)} workers")

    logs, weights, wall = spec.run(job)
    for log in logs:
        log.listener = None  # logs travel between ranks; the listener is this process's own
    if spec.mpi and comm.size > 1:
        gathered = comm.gather_obj(logs)
        result = _finish(job, [log for part in gathered for log in part], weights, wall) if comm.rank == 0 else None
        result = comm.bcast_obj(result)
    else:
        result = _finish(job, logs, weights, wall)
    fm = job.flat_model()
    fm.flat[...] = result.weights
    result.model = fm.module
    return result


# -- the synchronous baseline ----------------------------------------------------------------------------
def start_clock(comm) -> float:
    """Line the ranks up (politely: idle ranks yield their cores), then start this rank's clock."""
    comm.barrier(poll=True)
    return time.perf_counter()


@register("sync", "synchronous data parallel (allreduce)", workers=lambda job: range(job.comm.size))
def run_sync(job):
    """Synchronous SGD: every step, all ranks' gradients are averaged (allreduce) and applied everywhere.

    The baseline async methods are measured against; at one rank it is plain minibatch SGD. A straggler
    (``delay``) slows every rank, since each step waits for the slowest.
    """
    comm, fm = job.comm, job.flat_model()
    comm.bcast_(fm.flat)
    log = job.log(comm.rank, initial=fm.flat.copy() if comm.rank == 0 else None)
    batches = job.batches(comm.rank, comm.size)
    t0 = start_clock(comm)
    for step in range(job.steps):
        loss, g = job.gradient(fm, batches, comm.rank)
        comm.allreduce_(g)
        fm.flat -= (job.lr(step) / comm.size) * g
        log.update(0, time.perf_counter() - t0, loss)
        if comm.rank == 0 and (step + 1) % job.record_every == 0:
            log.snapshots.append((time.perf_counter() - t0, step + 1, fm.flat.copy()))
    return [log], fm.flat.copy(), time.perf_counter() - t0


# The variants register themselves in METHODS; imported last, since they import from this module.
for _variant in ("hogwild", "parameter_server", "rma"):
    importlib.import_module(f".{_variant}", __package__)
