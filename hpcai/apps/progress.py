"""How far an application run is, told to whoever watches: the control panel, a notebook, the engines' client.

An application calls ``progress.phase("simulation", total)`` when it starts a stage and
``progress.update(done, loss=...)`` as it goes; one with several stages may first say how they weigh,
``progress.plan(1, 4)``, so one bar (``overall``) runs across them all. :class:`Progress` keeps the state
(phase, step of total, elapsed time, rate and time left, the loss curve so far) and hands a snapshot -- a
plain dict, cheap to send between processes --
to its sinks at most every ``every`` seconds (always on a phase change and at the end). Sinks are plain
callables: the panel's widgets in this process, or ``ipyparallel.datapub.publish_data`` on an MPI engine,
which the client reads from ``AsyncResult.data`` while the run goes on.

Stopping is cooperative in-process: when the ``stop`` event is set, the next ``update`` raises
:class:`Stopped` in the application's own thread, between two steps, so nothing is left half-written.
"""
from __future__ import annotations

import math
import threading
import time
from typing import Callable, Iterable

from .. import checks
from ..train.callbacks import Callback

MAX_POINTS = 400  # loss points kept in a snapshot (older ones thinned), so snapshots stay small


def duration(seconds: float, compact: bool = False) -> str:
    """A duration as people read it: ``42 s``, ``3 min 05 s``, ``1 h 02 min``; ``compact`` for a terminal
    line: ``42s``, ``3m05s``, ``1h02m``. One rounding rule for the panel and the CLI."""
    value = max(0, int(round(seconds)))
    s, m, h = ("s", "m", "h") if compact else (" s", " min", " h")
    gap = "" if compact else " "
    if value < 60:
        return f"{value}{s}"
    if value < 3600:
        return f"{value // 60}{m}{gap}{value % 60:02d}{s}"
    return f"{value // 3600}{h}{gap}{value % 3600 // 60:02d}{m}"


class Stopped(Exception):
    """Raised inside an application's run when it was asked to stop."""


class Progress:
    """A run's progress: the current phase, its step of total, and the training loss so far.

    Args:
        sinks: callables ``sink(snapshot: dict)``; see :meth:`snapshot` for the keys.
        every: least seconds between two snapshots sent (phase changes and :meth:`finish` always send).
        stop: a ``threading.Event``; once set, :meth:`update` and :meth:`phase` raise :class:`Stopped`.
    """

    def __init__(self, sinks: Iterable[Callable] = (), every: float = 0.25, stop: threading.Event | None = None):
        self.sinks = list(sinks)
        if not all(callable(sink) for sink in self.sinks):
            raise TypeError(f"sinks: expected functions sink(snapshot), got {self.sinks!r}")
        if isinstance(every, bool) or not isinstance(every, (int, float)) or not every >= 0:
            raise ValueError(f"every: expected seconds >= 0, got {every!r}")
        if stop is not None and not isinstance(stop, threading.Event):
            raise TypeError(f"stop: expected a threading.Event or None, got {stop!r}")
        self.every, self.stop = float(every), stop
        self._lock = threading.Lock()  # updates may come from several threads (Hogwild workers)
        self._start = time.perf_counter()
        self._sent = -math.inf
        self.name, self.done, self.total, self.message, self.finished = "starting", 0, 0, "", False
        self._phase_start = self._start
        self._weights: tuple[float, ...] = ()  # the planned phases' weights (:meth:`plan`)
        self._phases = 0  # phases begun since the plan
        self.losses: list[tuple[int, float]] = []  # (training step, loss) over the whole run
        self._step = 0  # training steps seen, across phases

    def plan(self, *weights: float) -> None:
        """The phases to come, by their relative weight (say, expected seconds): the next ``len(weights)``
        :meth:`phase` calls are those phases, in order, and ``overall`` in the snapshot spans them all."""
        if not weights or any(isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0 for w in weights):
            raise ValueError(f"weights: expected one number > 0 per phase, got {weights!r}")
        with self._lock:
            self._weights, self._phases = tuple(float(w) for w in weights), 0

    def phase(self, name: str, total: int, message: str = "") -> None:
        """Begin stage ``name`` of ``total`` steps (a simulation's output steps, training iterations, ...)."""
        self._check_stop()
        total = checks.integer("total (steps; 0: unknown)", total, 0)
        with self._lock:
            self.name, self.done, self.total, self.message = name, 0, total, message
            self._phase_start = time.perf_counter()
            self._phases += 1
        self._send(force=True)

    def update(self, done: int | None = None, loss: float | None = None, message: str | None = None) -> None:
        """``done`` steps of the phase so far (default: one more); ``loss``: a training loss to plot."""
        self._check_stop()
        with self._lock:
            self.done = self.done + 1 if done is None else int(done)
            if loss is not None:
                self._record(loss)
            if message is not None:
                self.message = message
        self._send()

    def loss(self, value: float) -> None:
        """Record a training loss without advancing the phase (training that runs inside another phase)."""
        self._check_stop()
        with self._lock:
            self._record(value)
        self._send()

    def _record(self, loss: float) -> None:
        """One more training step's loss (a non-finite one is not plotted); the caller holds the lock."""
        if math.isfinite(loss):
            self._step += 1
            self.losses.append((self._step, float(loss)))

    def finish(self, message: str = "done") -> None:
        with self._lock:
            self.finished, self.message, self.done = True, message, self.total
        self._send(force=True)

    def snapshot(self) -> dict:
        """``{"phase", "done", "total", "fraction", "overall", "elapsed", "rate", "eta", "message", "finished",
        "steps", "losses"}``: ``fraction`` of the current phase, ``overall`` of the whole run (the planned
        phases, else the current one), ``elapsed`` seconds since the start, ``rate`` the phase's steps per
        second and ``eta`` the seconds left (None while unknown)."""
        now = time.perf_counter()
        with self._lock:
            points = self.losses
            if len(points) > MAX_POINTS:  # thin evenly, keeping the newest point
                stride = math.ceil(len(points) / MAX_POINTS)
                points = points[len(points) - 1::-stride][::-1]
            fraction = min(1.0, self.done / self.total) if self.total else 0.0
            overall = 1.0 if self.finished else self._overall(fraction)
            spent, elapsed = now - self._phase_start, now - self._start
            rate = self.done / spent if self.done > 0 and spent > 0 else None
            eta = 0.0 if self.finished else None
            if eta is None and self._weights and 0 < overall < 1:
                eta = elapsed * (1 - overall) / overall  # the planned phases at the pace so far
            elif eta is None and rate and self.total:
                eta = max(0, self.total - self.done) / rate
            return {"phase": self.name, "done": self.done, "total": self.total, "fraction": fraction,
                    "overall": overall, "elapsed": elapsed, "rate": rate, "eta": eta, "message": self.message,
                    "finished": self.finished, "steps": [p[0] for p in points], "losses": [p[1] for p in points]}

    def _overall(self, fraction: float) -> float:
        """The whole run's fraction done: the planned phases before this one, and this one's share."""
        if not self._weights or self._phases < 1:
            return fraction
        i = min(self._phases, len(self._weights)) - 1
        before, total = sum(self._weights[:i]), sum(self._weights)
        return min(1.0, (before + self._weights[i] * fraction) / total)

    def _check_stop(self) -> None:
        if self.stop is not None and self.stop.is_set():
            raise Stopped(f"stopped by request during {self.name}")

    def _send(self, force: bool = False) -> None:
        now = time.perf_counter()
        with self._lock:  # one thread sends (several report, for Hogwild)
            if not self.sinks or (not force and now - self._sent < self.every):
                return
            self._sent = now
        snap = self.snapshot()
        for sink in self.sinks:
            sink(snap)


def as_progress(progress) -> Progress:
    """``progress`` itself, a Progress around a callable sink, or a silent Progress for None."""
    if isinstance(progress, Progress):
        return progress
    if progress is None:
        return Progress()
    if callable(progress):
        return Progress([progress])
    raise TypeError(f"progress: expected a Progress, a callable or None, got {type(progress).__name__}")


def publish_to_client(snapshot: dict) -> None:
    """A sink for MPI engines: the snapshot becomes ``AsyncResult.data["progress"]`` on the client."""
    from ipyparallel.datapub import publish_data
    publish_data({"progress": snapshot})


class FitProgress(Callback):
    """fit's per-step hook into a run's :class:`Progress` (steps done in the phase, the running loss)."""

    def __init__(self, progress, steps_per_epoch):
        self.progress, self.steps_per_epoch, self.epoch = progress, steps_per_epoch, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_batch_end(self, step, logs=None):
        self.progress.update(self.epoch * self.steps_per_epoch + step + 1, loss=(logs or {}).get("loss"))
