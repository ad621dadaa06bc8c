"""The straggler study: does asynchronous SGD reach a target loss sooner than synchronous SGD when one worker
is slow? Sync vs Hogwild vs parameter server vs RMA, worker 1 slowed k times, several seeds, mean and spread.

Two ways to take the time, the same numerics (the digits MLP 64-64-10, minibatches of 32, the same number
of gradients per run; async applies each gradient at ``lr``, sync averages N gradients per step at ``lr *
N``, the linear scaling rule of Goyal et al. 2017):

* ``mode="simulated"``: a deterministic discrete-event simulation. Each worker has a virtual clock: a
  gradient costs 1 unit on a fast worker and k on the slowed one. Sync steps when the slowest gradient is
  in (a step costs k units); an asynchronous worker reads the weights, and its gradient is applied k (or
  1) units later, to whatever the weights are then, in the order of those times (ties by worker id), so
  staleness follows from the clocks. Hogwild and RMA then run the same algorithm on N workers (their
  costs of shared memory vs one-sided messages are not modelled: all communication is free here), the
  parameter server has N - 1 workers (rank 0 serves). Independent of the machine and its load.
* ``mode="measured"``: the real methods (:func:`~hpcai.parallel.asynchronous.train_async`) on the ranks
  of ``comm``, timed in seconds, worker 1 sleeping so it takes k times its compute time. Meant for ranks
  <= cores: with more ranks than cores, the ranks take turns on the cores and the times measure that.

:func:`study` returns a :class:`StudyResult`: per strategy and slowdown, the mean and spread over the seeds
of the time to ``target`` (training loss on the whole training set) and of the final test accuracy, and a
``conclusion()`` that claims a difference only where the seeds' ranges do not overlap.
"""
from __future__ import annotations

import dataclasses
import heapq
import math
import statistics
from typing import Callable

import numpy as np

STRATEGIES = ("sync", "hogwild", "ps", "rma")
ASYNC = ("hogwild", "ps", "rma")
SLOWDOWNS = (1, 2, 4)
LR, BATCH, TARGET = 0.2, 32, 0.1
MODES = ("simulated", "measured")


@dataclasses.dataclass(frozen=True)
class Trial:
    """One run: time to the target (inf if never reached; units of the study) and the final test accuracy."""
    strategy: str
    slowdown: float
    seed: int
    time_to_target: float
    accuracy: float
    final_loss: float = math.nan
    updates: int = 0


def digits_mlp(seed: int = 0):
    """The study's model: MLP 64-64-10, initial weights drawn from ``seed``."""
    from .. import nn
    return nn.Sequential(nn.Linear(64, 64, rng=seed), nn.ReLU(), nn.Linear(64, 10, rng=seed + 1000))


def _data():
    from .. import datasets
    (x, y), (xt, yt) = datasets.digits(flat=True)
    return (x, y), (xt, yt)


# -- simulated time ----------------------------------------------------------------------------------------
def simulate(strategy: str, slowdown: float = 1.0, seed: int = 0, workers: int = 4, gradients: int = 1200,
             lr: float = LR, batch_size: int = BATCH, target: float = TARGET) -> Trial:
    """One run of ``strategy`` in virtual time (see the module docstring); time in units of a fast gradient.

    The training loss is evaluated after every sync step and after every ``workers``-th asynchronous update.
    """
    from ..train import get_loss
    from ..train.data import DataLoader
    from .asynchronous import FlatModel
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: expected one of {STRATEGIES}, got {strategy!r}")
    (x, y), (xt, yt) = _data()
    fm = FlatModel(digits_mlp(seed), get_loss("cross_entropy"))
    w = fm.flat.copy()
    n = workers - 1 if strategy == "ps" else workers  # the parameter server's rank 0 computes no gradients
    if n < 1:
        raise ValueError(f"workers: {strategy} needs at least {2 if strategy == 'ps' else 1}, got {workers}")
    ids = list(range(1, n + 1)) if strategy == "ps" else list(range(n))  # worker ids = ranks, as measured
    cost = {i: (float(slowdown) if i == 1 else 1.0) for i in ids}
    batches = {}
    for j, i in enumerate(ids):
        loader = DataLoader((x, y), batch_size, shuffle=True, seed=seed)
        loader.shard(j, n)
        batches[i] = _endless(loader)
    state = {"reached": math.inf, "evals": 0}

    def check(now):
        if state["reached"] == math.inf and fm.loss_at(w, x, y) <= target:
            state["reached"] = now

    def grad(i):
        fm.flat[...] = w
        return fm.gradient(*next(batches[i]))[1]

    updates = 0
    if strategy == "sync":
        step_cost = max(cost.values())
        for step in range(1, gradients // n + 1):
            g = sum(grad(i) for i in ids) / n
            w -= (lr * n) * g
            updates += 1
            check(step * step_cost)
    else:
        queue = []  # (finish time, worker id, gradient computed at the weights read when it started)
        for i in ids:
            heapq.heappush(queue, (cost[i], i, grad(i)))
        while updates < gradients:
            now, i, g = heapq.heappop(queue)
            w -= lr * g
            updates += 1
            if updates % workers == 0 or updates == gradients:
                check(now)
            if updates + len(queue) < gradients:  # start its next gradient on the weights as they are now
                heapq.heappush(queue, (now + cost[i], i, grad(i)))
    fm.flat[...] = w
    return Trial(strategy, float(slowdown), seed, state["reached"], _accuracy(fm.module, xt, yt),
                 fm.loss_at(w, x, y), updates)


def _endless(loader):
    while True:
        yield from loader


def _accuracy(model, x, y) -> float:
    from ..train import evaluate
    return float(evaluate(model, (x, y), metrics=["accuracy"])["accuracy"])


# -- measured time ------------------------------------------------------------------------------------------
def measure(strategy: str, slowdown: float = 1.0, seed: int = 0, comm=None, gradients: int = 1200,
            lr: float = LR, batch_size: int = BATCH, target: float = TARGET) -> Trial:
    """One run of ``strategy`` with :func:`train_async` on the ranks of ``comm`` (every rank calls it and gets
    the same Trial); seconds to the target. Hogwild runs ``comm.size`` threads on rank 0 while the other
    ranks wait without taking a core."""
    from .asynchronous import train_async
    from .comm import world
    comm = comm if comm is not None else world()
    (x, y), (xt, yt) = _data()
    n = comm.size
    delay = {1: float(slowdown)} if slowdown > 1 and n > 1 else None
    steps, rate = (gradients // n, lr * n) if strategy == "sync" else (gradients, lr)
    trial = None
    if strategy != "hogwild" or comm.rank == 0:
        r = train_async(strategy, lambda: digits_mlp(seed), (x, y), lr=rate, steps=steps, batch_size=batch_size,
                        comm=comm, threads=n, delay=delay, seed=seed, record_every=max(1, steps // 100))
        trial = Trial(strategy, float(slowdown), seed, r.time_to(target), _accuracy(r.model, xt, yt),
                      r.final_loss, r.steps)
    if strategy == "hogwild" and n > 1:
        comm.barrier(poll=True)
        trial = comm.bcast_obj(trial)
    return trial


# -- the study ----------------------------------------------------------------------------------------------
def _spread(values) -> dict:
    v = [float(a) for a in values]
    finite = [a for a in v if math.isfinite(a)]
    if len(finite) < len(v):  # a seed that never reached the target: no mean, only how many did
        return {"mean": math.inf, "std": math.nan, "min": min(v), "max": max(v), "n": len(v), "reached": len(finite)}
    return {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "min": min(v),
            "max": max(v), "n": len(v), "reached": len(v)}


@dataclasses.dataclass
class StudyResult:
    """Every trial of a study, and its statistics over the seeds (``rows``: one dict per strategy and slowdown)."""
    mode: str
    target: float
    workers: int
    trials: list
    unit: str

    @property
    def rows(self) -> list:
        keys = sorted({(t.strategy, t.slowdown) for t in self.trials},
                      key=lambda k: (k[1], STRATEGIES.index(k[0]) if k[0] in STRATEGIES else 99, k[0]))
        rows = []
        for strategy, k in keys:
            trials = sorted((t for t in self.trials if (t.strategy, t.slowdown) == (strategy, k)), key=lambda t: t.seed)
            time, acc = _spread(t.time_to_target for t in trials), _spread(t.accuracy for t in trials)
            rows.append({"strategy": strategy, "slowdown": k, "seeds": [t.seed for t in trials],
                         **{f"time_{s}": time[s] for s in ("mean", "std", "min", "max")}, "reached": time["reached"],
                         **{f"accuracy_{s}": acc[s] for s in ("mean", "std", "min", "max")}})
        return rows

    def row(self, strategy: str, slowdown: float) -> dict:
        return next(r for r in self.rows if r["strategy"] == strategy and r["slowdown"] == slowdown)

    def table(self) -> str:
        """The statistics as text: mean +- std [min, max] over the seeds."""
        rows = self.rows
        who = f"{self.workers} {'workers' if self.mode == 'simulated' else 'ranks'}"
        lines = [f"straggler study ({self.mode} time, {who}; worker 1 slowed k x; "
                 f"{len(rows[0]['seeds']) if rows else 0} seeds): time to training loss <= {self.target} in "
                 f"{self.unit}, final test accuracy; mean +- std [min, max]",
                 f"{'strategy':10}{'k':>4}  {'time to target':<40}final accuracy"]
        for r in rows:
            t = (f"{r['time_mean']:8.4g} +- {r['time_std']:<8.3g} [{r['time_min']:.4g}, {r['time_max']:.4g}]"
                 if r["reached"] == len(r["seeds"]) else f"reached in {r['reached']}/{len(r['seeds'])} seeds")
            a = (f"{r['accuracy_mean']:.4f} +- {r['accuracy_std']:.4f} "
                 f"[{r['accuracy_min']:.3f}, {r['accuracy_max']:.3f}]")
            lines.append(f"{r['strategy']:10}{r['slowdown']:>4g}  {t:<40}{a}")
        if self.mode == "simulated" and {"hogwild", "rma"} <= {r["strategy"] for r in rows}:
            lines.append("(in simulated time rma runs hogwild's algorithm on the same workers: the same numbers)")
        return "\n".join(lines)

    def conclusion(self) -> str:
        """What the data supports, per slowdown: the fastest asynchronous strategy against sync, a difference
        claimed only where the seeds' [min, max] ranges of time to target do not overlap (and never from one
        seed, whose range is a point)."""
        lines, n = [], len(self.rows[0]["seeds"]) if self.rows else 0
        slowdowns = sorted({r["slowdown"] for r in self.rows})
        for k in slowdowns:
            here = {r["strategy"]: r for r in self.rows if r["slowdown"] == k}
            if "sync" not in here or not any(s in here for s in ASYNC):
                continue
            sync = here["sync"]
            candidates = [here[s] for s in ASYNC if s in here]
            best = min(candidates, key=lambda r: (r["time_mean"], r["time_max"]))
            name = best["strategy"]
            if not math.isfinite(sync["time_mean"]) or not math.isfinite(best["time_mean"]):
                lines.append(f"k={k:g}: not every seed reached the target (sync {sync['reached']}/{n}, "
                             f"{name} {best['reached']}/{n}); no time comparison.")
                continue
            spread = (f"sync {sync['time_mean']:.3g} [{sync['time_min']:.3g}, {sync['time_max']:.3g}], {name} "
                      f"{best['time_mean']:.3g} [{best['time_min']:.3g}, {best['time_max']:.3g}] {self.unit}")
            if n < 2:  # one seed: min = max = the value, so ranges never overlap; no spread to judge by
                verdict = f"one seed, no spread: no difference between {name} and sync is claimed"
            elif best["time_max"] < sync["time_min"]:
                verdict = f"{name} reaches the target {sync['time_mean'] / best['time_mean']:.2f}x sooner than sync"
            elif sync["time_max"] < best["time_min"]:
                verdict = f"sync reaches the target {best['time_mean'] / sync['time_mean']:.2f}x sooner than {name}"
            else:
                verdict = f"no difference beyond the seeds' spread between {name} and sync (their ranges overlap)"
            lines.append(f"k={k:g}: {verdict} (mean over {n} seeds, [min, max]: {spread}).")
        if len(slowdowns) > 1:
            lo, hi = slowdowns[0], slowdowns[-1]
            grow = []
            for s in ("sync",) + ASYNC:
                a, b = (next((r for r in self.rows if (r["strategy"], r["slowdown"]) == (s, k)), None)
                        for k in (lo, hi))
                if a and b and math.isfinite(a["time_mean"]) and math.isfinite(b["time_mean"]) and a["time_mean"] > 0:
                    grow.append(f"{s} x{b['time_mean'] / a['time_mean']:.2f}")
            if grow:
                lines.append(f"From k={lo:g} to k={hi:g} the mean time to target changes: {', '.join(grow)}.")
        for k in slowdowns:
            here = [r for r in self.rows if r["slowdown"] == k]
            top = max(here, key=lambda r: r["accuracy_mean"])
            bottom = min(here, key=lambda r: r["accuracy_mean"])
            if n > 1 and top is not bottom and bottom["accuracy_max"] < top["accuracy_min"]:
                lines.append(f"k={k:g}: final accuracy differs: {top['strategy']} {top['accuracy_mean']:.4f} vs "
                             f"{bottom['strategy']} {bottom['accuracy_mean']:.4f} (ranges do not overlap).")
            else:
                lines.append(f"k={k:g}: final accuracy: no difference beyond the seeds' spread between strategies "
                             f"({bottom['accuracy_mean']:.4f} to {top['accuracy_mean']:.4f}, ranges overlap).")
        return "\n".join(lines)

    def plot(self, ax=None):
        """Mean time to target against the slowdown, per strategy, with the seeds' [min, max] as error bars."""
        import matplotlib.pyplot as plt
        ax = ax if ax is not None else plt.subplots(figsize=(5, 3.5))[1]
        names = sorted({r["strategy"] for r in self.rows}, key=lambda s: STRATEGIES.index(s) if s in STRATEGIES else 99)
        for s in names:
            rows = [r for r in self.rows if r["strategy"] == s and math.isfinite(r["time_mean"])]
            k = np.array([r["slowdown"] for r in rows])
            mean = np.array([r["time_mean"] for r in rows])
            err = np.array([[r["time_mean"] - r["time_min"] for r in rows],
                            [r["time_max"] - r["time_mean"] for r in rows]])
            ax.errorbar(k, mean, yerr=err, marker="o", capsize=3, label=s)
        ax.set_xlabel("slowdown k of worker 1")
        ax.set_ylabel(f"time to loss <= {self.target} ({self.unit})")
        ax.set_xticks(sorted({r["slowdown"] for r in self.rows}))
        ax.set_title(f"{self.mode} time, {self.workers} {'workers' if self.mode == 'simulated' else 'ranks'}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        return ax

    def __repr__(self) -> str:
        return f"StudyResult({self.mode}, {len(self.trials)} trials)\n{self.table()}\n{self.conclusion()}"


def study(mode: str = "simulated", strategies=STRATEGIES, slowdowns=SLOWDOWNS, seeds=5, workers: int = 4,
          gradients: int = 1200, lr: float = LR, batch_size: int = BATCH, target: float = TARGET, comm=None,
          trial: Callable | None = None, progress: Callable | None = None) -> StudyResult:
    """Run every strategy x slowdown x seed; returns the :class:`StudyResult` (on every rank, when measured).

    Args:
        mode: "simulated" (virtual time, ``workers`` workers) or "measured" (seconds, the ranks of ``comm``;
            call it on every rank).
        seeds: how many seeds (0, 1, ...) or the seeds themselves; each draws the initial weights and the
            minibatch order.
        trial: ``trial(strategy, slowdown, seed) -> Trial`` instead of :func:`simulate` / :func:`measure`.
        progress: ``progress(trial)`` after each run.
    """
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seeds:
        raise ValueError("seeds: expected at least one seed")
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"strategies: expected names in {STRATEGIES}, got {unknown}")
    if mode == "measured":
        from .comm import world
        comm = comm if comm is not None else world()
        workers = comm.size
    if trial is None:
        opts = dict(gradients=gradients, lr=lr, batch_size=batch_size, target=target)
        if mode == "simulated":
            done = {}

            def trial(s, k, seed):  # in virtual time rma is hogwild's algorithm on the same workers: run it once
                same = "hogwild" if s in ("hogwild", "rma") else s
                if (same, k, seed) not in done:
                    done[same, k, seed] = simulate(same, k, seed, workers=workers, **opts)
                return dataclasses.replace(done[same, k, seed], strategy=s)
        else:
            def trial(s, k, seed):
                return measure(s, k, seed, comm=comm, **opts)
    trials = []
    for seed in seeds:  # seeds outermost: a drift in machine load spreads over every strategy alike
        for k in slowdowns:
            for s in strategies:
                t = trial(s, k, seed)
                trials.append(t)
                if progress is not None:
                    progress(t)
    return StudyResult(mode, target, workers, trials, "gradient times" if mode == "simulated" else "s")
