"""One trial on the ranks of its group: what it runs, what it reports, and how a prune ends it on every rank.

A trial is a function ``fn(params, ctx) -> float`` or an application from :data:`hpcai.apps.APPS` (its Config
made of the fixed fields and the trial's parameters; the objective is one of its Result's metrics). Inside,
:meth:`TrialContext.report` is collective over the group: rank 0 sends the value to the process holding the
study and gets back whether to prune, then broadcasts that decision, so every rank raises :class:`TrialPruned`
at the same step and a pruned multi-rank trial ends cleanly. An application reports through its own
:class:`~hpcai.apps.progress.Progress`: ``ctx.progress`` turns its training losses into intermediate values,
one at each tenth of the training phase (steps 10, 20, ... 100: percent done), so pruners compare trials of
different lengths at the same stage. That needs ranks that report in step -- synchronous data parallel and
every one-rank trial; an application whose ranks report unevenly (asynchronous strategies) must be tuned
with ``pruner="none"``.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np

from ..apps.progress import Progress
from ..io import json_default

REPORTS = 10  # intermediate values per training phase


class TrialPruned(Exception):
    """Raised on every rank of a trial's group when the study's pruner stops it; ``step`` says where."""

    def __init__(self, step: int):
        super().__init__(f"pruned at step {step}")
        self.step = step


def request(conn, *message):
    """Send ``message`` to the process holding the study and return its answer."""
    conn.send_bytes(json.dumps(message, default=json_default).encode())
    return json.loads(conn.recv_bytes())


class TrialContext:
    """What a trial function gets besides its parameters.

    Attributes:
        number: the trial's number in the study.
        params: its parameters (also the function's first argument).
        comm: the group's communicator for this trial (a fresh duplicate: its messages stay in the trial).
        ranks: the group's ranks in the engines' MPI world, in ``comm`` rank order.
        progress: a Progress whose training losses become intermediate values (pass it to an application).
    """

    def __init__(self, number, params, comm, control, conn, ranks, sign):
        self.number, self.params, self.comm, self.ranks = number, params, comm, ranks
        self._control, self._conn, self._sign = control, conn, sign
        self._phases, self._reported, self._since, self._phase, self._counted = 0, 0, 0, None, False
        self.progress = Progress([self._on_progress], every=0.0)

    @property
    def rank(self) -> int:
        return self.comm.rank

    def report(self, value: float, step: int) -> None:
        """Collective over the group: ``value`` at ``step`` goes to the study (rank 0's counts); raises
        TrialPruned on every rank when the pruner says stop."""
        prune = None
        if self._control.rank == 0:
            prune = request(self._conn, "report", self.number, int(step), float(value))
        if self._control.bcast_obj(prune):
            raise TrialPruned(int(step))

    def _on_progress(self, snap: dict) -> None:
        """A snapshot of the application's Progress: at each tenth of a training phase (one with losses),
        report the mean loss since the last report (negated in a maximising study: larger is better there)."""
        if snap["phase"] != self._phase:
            self._phase, self._reported, self._since = snap["phase"], 0, snap["steps"][-1] if snap["steps"] else 0
            self._counted = False
        if not snap["total"] or not snap["steps"]:
            return
        tenth = min(REPORTS, int(REPORTS * snap["done"] / snap["total"]))
        if tenth <= self._reported:
            return
        steps, losses = np.asarray(snap["steps"]), np.asarray(snap["losses"])
        recent = losses[steps > self._since]
        if recent.size == 0:
            return
        if not self._counted:
            self._phases, self._counted = self._phases + 1, True
        self._reported, self._since = tenth, int(steps[-1])
        step = 100 * (self._phases - 1) + tenth * (100 // REPORTS)
        self.report(self._sign * float(recent.mean()), step)


@dataclasses.dataclass(frozen=True)
class AppObjective:
    """The application ``app`` run with ``fixed`` Config fields and the trial's; its ``metric`` is the value."""

    app: str
    fixed: dict
    metric: str

    def __call__(self, params: dict, ctx: TrialContext) -> float:
        from ..apps import APPS, make_config
        from ..runner import run_on_ranks
        config = make_config(self.app, {**self.fixed, **params})
        metrics = run_on_ranks(APPS[self.app], config, ctx.comm, 0, ctx.progress).metrics
        if self.metric not in metrics:
            raise KeyError(f"metric: {self.app} reports no {self.metric!r}; its metrics: {sorted(metrics)}")
        return float(metrics[self.metric])
