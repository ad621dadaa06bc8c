"""Tuner: an Optuna study whose trials run side by side on groups of MPI engines.

::

    tuner = Tuner("digits", {"lr": (1e-4, 1e-1, "log"), "optimizer": ["adam", "sgd"]}, metric="test_accuracy",
                  direction="maximize", fixed={"epochs": 5}, engines=4, group=2, storage="tune/digits.journal")
    tuner.run(20)               # or start(20) / wait(): the notebook stays free (TuneView shows it live)
    tuner.best_value, tuner.best_params

The notebook process holds the study (a journal file: a later Tuner on the same file resumes it) and hands
trials to the groups (:mod:`hpcai.tune.broker`); the engines run them (:mod:`hpcai.tune.groups`). When the
engines' MPI job ends under a study -- an engine died, or a rank raised while its group waited for it -- the
trials that were running fail with the reason, those not at fault are retried once, the engines are restarted
and the study goes on, up to ``restarts`` times.
"""
from __future__ import annotations

import math
import os
import pickle
import threading

from .. import checks
from .broker import Broker, record_of
from .space import search_space
from .study import counted, open_study, optuna, recover
from .trial import AppObjective

PLOTS = ("history", "parallel_coordinate", "importances", "intermediate")


class Tuner:
    """A study of ``objective`` over ``params`` on ``engines`` in groups of ``group``.

    Args:
        objective: an application's name (in :data:`hpcai.apps.APPS`) or a function ``fn(params, ctx) -> float``
            run on every rank of a group (``ctx``: :class:`~hpcai.tune.trial.TrialContext`; rank 0's value counts).
        params: {name: distribution}: for an application, Config fields (see :func:`~hpcai.tune.space.search_space`).
        metric: the application's Result metric to optimise (required for an application).
        direction: "maximize" or "minimize".
        fixed: Config fields every trial of an application uses (``{"epochs": 5}``).
        engines: 0 -- trials run one after another in this process; N -- N local MPI engines started by each
            run and stopped after; an :class:`hpcai.cluster.Engines` -- those (restarted when their job ends).
        group: engines per trial (each group is an MPI sub-communicator; engines left over sit out).
        storage: the study's journal file (on a file system the notebook sees; resumes when it exists).
        name: the study's name in that file (default: the application's or function's name).
        pruner: "median", "halving", "hyperband", "none" or an Optuna pruner. sampler: "tpe", "random" or an
            Optuna sampler; seed: the sampler's seed.
        restarts: how many times the engines are restarted after their job ended under the study.
        path: a folder, or a list of them, put first on the engines' ``sys.path``: where a trial function's
            module is found (a function defined in the notebook itself needs none).
        verbose: 2 shows the engines' output here.
    """

    def __init__(self, objective, params: dict, *, metric: str | None = None, direction: str = "maximize",
                 fixed: dict | None = None, engines=0, group: int = 1, storage="tune.journal", name: str | None = None,
                 pruner="median", sampler="tpe", seed: int | None = None, restarts: int = 3, path=None, verbose: int = 0):
        from ..apps import APPS, make_config
        self.direction = checks.choice("direction", direction, ("minimize", "maximize"))
        self.group = checks.integer("group", group, 1)
        self.restarts = checks.integer("restarts", restarts, 0)
        self.verbose = checks.integer("verbose", verbose, 0, 2)
        if verbose < 2:  # Optuna logs every trial at INFO; the Tuner's summary and view say it once
            optuna().logging.set_verbosity(optuna().logging.WARNING)
        n = engines if isinstance(engines, int) and not isinstance(engines, bool) else getattr(engines, "n", None)
        if n is None or n < 0:
            raise ValueError(f"engines: expected a number of engines >= 0 or an Engines, got {engines!r}")
        if n == 0 and self.group > 1:
            raise ValueError(f"group: expected 1 engine per group when trials run in this process (engines=0), "
                             f"got {group}")
        if n and self.group > n:
            raise ValueError(f"group: expected at most {n} engines per group (there are {n} engines), got {group}")
        self.engines, self.fixed = engines, dict(fixed or {})
        self.path = checks.folders("path", path)
        if isinstance(objective, str):
            checks.choice("objective (an application)", objective, tuple(APPS))
            checks.text("metric (a metric of the application's Result)", metric)
            self.space = search_space(params, APPS[objective].config)
            clash = sorted(set(self.fixed) & set(self.space))
            if clash:
                raise ValueError(f"fixed: {clash} are searched too; fix them or search them, not both")
            make_config(objective, self.fixed)  # the fixed fields, checked now
            self.objective, self.check = AppObjective(objective, self.fixed, metric), \
                lambda p: make_config(objective, {**self.fixed, **p})
        elif callable(objective):
            if fixed:
                raise ValueError("fixed: only for an application; a function takes its constants itself")
            self.space, self.objective, self.check = search_space(params), objective, None
        else:
            raise TypeError(f"objective: expected an application's name or a function fn(params, ctx), "
                            f"got {objective!r}")
        self.metric = metric
        self.name = name or (objective if isinstance(objective, str) else getattr(objective, "__name__", "study"))
        self.storage = os.path.abspath(os.fspath(storage))
        self.study = open_study(self.storage, self.name, self.direction, sampler, pruner, seed)
        self.broker: Broker | None = None
        self.error: BaseException | None = None
        self.restarted = 0
        self._thread, self._lock = None, threading.Lock()

    # -- running -----------------------------------------------------------------------------------------
    def run(self, n_trials: int) -> Tuner:
        """Run until the study holds ``n_trials`` trials (retries of failed ones not counted); blocks.
        Interrupted (Ctrl-C, the notebook's stop button), it hands out no more trials and lets the running ones
        finish in the background (:meth:`wait` for them)."""
        self.start(n_trials)
        try:
            return self.wait()
        except KeyboardInterrupt:
            self.stop()
            raise

    def start(self, n_trials: int) -> Tuner:
        """Start running in a background thread (see :meth:`run`); :meth:`wait` joins it."""
        checks.integer("n_trials", n_trials, 1)
        with self._lock:
            if self.running:
                raise RuntimeError("this Tuner is already running: wait() for it or stop() it first")
            recover(self.study)
            self.error = None
            self.broker = Broker(self.study, self.space, n_trials, self.check,
                                 public=not isinstance(self.engines, int) and self.engines.config["engines"] != "mpi")
            self._thread = threading.Thread(target=self._run, name="hpcai-tuner", daemon=True)
            self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> Tuner:
        """Block until the run ends (or ``timeout`` seconds pass); re-raises what ended it abnormally."""
        checks.timeout("timeout", timeout)
        if self._thread is not None:
            self._thread.join(timeout)
        if self.error is not None and not self.running:
            error, self.error = self.error, None
            raise error
        return self

    def stop(self) -> None:
        """Hand out no more trials; those running finish (then :meth:`wait` returns)."""
        if self.broker is not None:
            self.broker.stopping = True

    def enqueue(self, params: dict) -> None:
        """Run these parameters in a coming trial (a known good configuration, the defaults, ...)."""
        unknown = sorted(set(params) - set(self.space))
        if unknown:
            raise ValueError(f"params: {unknown} are not searched; searched: {sorted(self.space)}")
        self.study.enqueue_trial(dict(params))

    def _run(self):
        from ..cluster import EngineError, Engines
        from ..parallel.comm import SerialCommunicator
        from ..runner import ensure_running
        broker, sign = self.broker, (-1.0 if self.direction == "maximize" else 1.0)
        own = Engines(self.engines) if isinstance(self.engines, int) and self.engines > 0 else None
        cluster = own or self.engines
        try:
            if not cluster:
                from .groups import serve
                serve(SerialCommunicator(), broker.address, broker.authkey, 1, self.objective, sign)
                return
            from ipyparallel.serialize import can

            from .groups import serve_on_engine
            args = (broker.address, broker.authkey, self.group, pickle.dumps(can(self.objective)), sign, self.path)
            while True:
                try:
                    ensure_running(cluster).run_sync(serve_on_engine, *args, stream=self.verbose > 1)
                    return
                except EngineError as e:
                    broker.abandon(e)
                    if e.job_ended is None or self.restarted >= self.restarts:
                        raise
                    self.restarted += 1
                    if broker.done:
                        return
        except BaseException as e:  # noqa: BLE001 - kept for wait() to raise in the caller's thread
            self.error = e
        finally:
            broker.close()
            if own is not None:
                own.stop_sync()

    # -- results -------------------------------------------------------------------------------------------
    def trials(self) -> list[dict]:
        """One record per trial: number, state, value, params, group, ranks, intermediate, error, seconds."""
        if self.broker is not None:
            return self.broker.snapshot()
        return [record_of(t) for t in self.study.get_trials(deepcopy=False)]

    def counts(self) -> dict:
        """How many trials are in each state (COMPLETE, PRUNED, FAIL, RUNNING, WAITING), and how many count."""
        out = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0, "RUNNING": 0, "WAITING": 0}
        for t in self.trials():
            out[t["state"]] = out.get(t["state"], 0) + 1
        out["counted"] = counted(self.study)
        return out

    @property
    def best_value(self) -> float | None:
        done = [t for t in self.trials() if t["state"] == "COMPLETE"]
        if not done:
            return None
        pick = max if self.direction == "maximize" else min
        return pick(t["value"] for t in done)

    @property
    def best_params(self) -> dict | None:
        best = self.best_value
        return next((t["params"] for t in self.trials() if t["state"] == "COMPLETE" and t["value"] == best), None)

    def best_config(self):
        """For an application: its Config with the fixed fields and the best parameters."""
        from ..apps import make_config
        if not isinstance(self.objective, AppObjective) or self.best_params is None:
            return None
        return make_config(self.objective.app, {**self.fixed, **self.best_params})

    def summary(self, last: int | None = None) -> str:
        """A plain-text table of the trials (the last ``last`` of them) and the best so far."""
        rows = self.trials()[-last:] if last else self.trials()
        c = self.counts()
        head = (f"study {self.name!r} ({self.direction} {self.metric or 'value'}): {c['COMPLETE']} complete, "
                f"{c['PRUNED']} pruned, {c['FAIL']} failed, {c['RUNNING']} running; best "
                f"{_fmt(self.best_value)} with {self.best_params}")
        lines = [head]
        lines += [self.summary_line(t) for t in rows]
        return "\n".join(lines)

    @staticmethod
    def summary_line(t: dict) -> str:
        """One trial as a line: number, state, value, parameters, where it ran, how it ended."""
        where = f"group {t['group']} ranks {t['ranks']}" if t["ranks"] is not None else ""
        if t["state"] == "PRUNED":
            extra = f"pruned at step {max(t['intermediate'], default='?')}"
        elif t["state"] == "FAIL":
            extra = next((line.strip() for line in reversed((t["error"] or "").splitlines()) if line.strip()), "")
        else:
            extra = ""
        return (f"  #{t['number']:<3} {t['state']:<8} {_fmt(t['value']):>9}  {_params(t['params'])}  {where}  "
                f"{extra[:120]}").rstrip()

    def plot(self, kind: str = "history"):
        """An Optuna figure of the study (matplotlib): "history", "parallel_coordinate", "importances" or
        "intermediate"; returns the matplotlib Figure."""
        checks.choice("kind", kind, PLOTS)
        import warnings
        vis = optuna().visualization.matplotlib
        fn = {"history": vis.plot_optimization_history, "parallel_coordinate": vis.plot_parallel_coordinate,
              "importances": vis.plot_param_importances, "intermediate": vis.plot_intermediate_values}[kind]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            return fn(self.study).figure


def _fmt(value) -> str:
    return "-" if value is None or isinstance(value, float) and math.isnan(value) else f"{value:.4g}"


def _params(params: dict) -> str:
    return ", ".join(f"{k}={_fmt(v) if isinstance(v, float) else v}" for k, v in params.items())
