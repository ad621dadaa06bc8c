"""The study's side of the conversation with the groups: ask, report, tell, over one socket per group.

The notebook (or the CLI process) holds the Optuna study; each group's rank 0 connects here
(``multiprocessing.connection``, authenticated by a key made for this run) and sends plain tuples:
``("ask", group, ranks, hosts, pids)`` -> ``(number, params)`` or None when the study is done;
``("report", number, step, value)`` -> whether to prune; ``("tell", number, statuses, seconds)`` -> None.
The broker also keeps a record per trial (state, value, parameters, group and ranks, intermediate values,
error) for the live view, and fails the trials that were running when engines were lost (:meth:`abandon`).
"""
from __future__ import annotations

import contextlib
import json
import re
import secrets
import socket
import threading
import time
from multiprocessing.connection import Listener

from ..io import json_default
from .space import suggest
from .study import RETRY_OF, counted, fail, optuna, waiting

_DIED = re.compile(r"rank\(s\) \[([\d, ]+)\] died")


def record_of(t) -> dict:
    """The record of a stored trial (an Optuna FrozenTrial): what the broker keeps for the view."""
    return {"number": t.number, "state": t.state.name, "value": t.value if t.state.name == "COMPLETE" else None,
            "params": dict(t.params), "group": t.user_attrs.get("group"), "ranks": t.user_attrs.get("ranks"),
            "intermediate": dict(t.intermediate_values), "error": t.user_attrs.get("error"),
            "seconds": t.user_attrs.get("seconds"), "retry_of": t.user_attrs.get(RETRY_OF)}


class Broker:
    """Serves the groups of one run of a study until :meth:`close`.

    Args:
        study: the Optuna study. space: {name: distribution}. n_trials: the trials the study should hold
            (retries not counted). check: ``check(params)`` raises ValueError for parameters that cannot run
            (the trial then fails at once, without engines). public: listen on every interface (engines on
            other nodes) instead of 127.0.0.1.
    """

    def __init__(self, study, space, n_trials: int, check=None, public: bool = False):
        self.study, self.space, self.n_trials, self.check = study, space, n_trials, check
        self.authkey = secrets.token_bytes(32)
        self.listener = Listener(("0.0.0.0" if public else "127.0.0.1", 0), authkey=self.authkey)
        port = self.listener.address[1]
        self.address = (socket.getfqdn() if public else "127.0.0.1", port)
        self.lock = threading.RLock()
        self.running: dict[int, tuple] = {}  # number -> (optuna Trial, group, ranks)
        self.records: dict[int, dict] = {}
        self.stopping = False
        self._threads = [threading.Thread(target=self._accept, name="hpcai-tune-broker", daemon=True)]
        self._threads[0].start()
        for t in study.get_trials(deepcopy=False):
            self.records[t.number] = record_of(t)

    # -- the connections -------------------------------------------------------------------------------
    def _accept(self):
        while True:
            try:
                conn = self.listener.accept()
            except (OSError, EOFError):  # closed, or a connection that failed to authenticate
                if self.listener is None:
                    return
                continue
            t = threading.Thread(target=self._serve, args=(conn,), name="hpcai-tune-group", daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn):
        handlers = {"ask": self.ask, "report": self.report, "tell": self.tell}
        with conn:
            while True:
                try:  # JSON, not pickle: what arrives over a socket is never unpickled
                    kind, *args = json.loads(conn.recv_bytes())
                except (EOFError, OSError):
                    return
                conn.send_bytes(json.dumps(handlers[kind](*args), default=json_default).encode())

    def close(self):
        listener, self.listener = self.listener, None
        with contextlib.suppress(Exception):
            listener.close()

    # -- the requests ----------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        """No more trials to hand out: stopping, or the budget is spent and no retry waits."""
        return self.stopping or counted(self.study) >= self.n_trials and not waiting(self.study)

    def ask(self, group, ranks, hosts, pids):
        """The next trial for ``group``: (number, params), or None when the study is done."""
        with self.lock:
            while not self.done:
                trial = self.study.ask()
                params = suggest(trial, self.space)
                retry = trial.user_attrs.get(RETRY_OF)
                try:
                    if self.check is not None:
                        self.check(params)
                except (ValueError, TypeError) as e:  # fails here, no engine needed
                    trial.set_user_attr("error", f"invalid parameters: {e}")
                    self.study.tell(trial, state=optuna().trial.TrialState.FAIL)
                    self._record(trial.number, state="FAIL", params=params, error=f"invalid parameters: {e}",
                                 retry_of=retry)
                    continue
                for key, value in (("group", group), ("ranks", ranks), ("hosts", hosts), ("pids", pids)):
                    trial.set_user_attr(key, value)
                self.running[trial.number] = (trial, group, ranks)
                self._record(trial.number, state="RUNNING", params=params, group=group, ranks=ranks,
                             intermediate={}, started=time.time(), retry_of=retry)
                return trial.number, params
            return None

    def report(self, number, step, value) -> bool:
        """Intermediate ``value`` of trial ``number`` at ``step``; whether the pruner stops it."""
        with self.lock:
            trial = self.running[number][0]
            trial.report(value, step)
            self.records[number]["intermediate"][step] = value
            return bool(trial.should_prune())

    def tell(self, number, statuses, seconds):
        """The outcome from every rank of the group: complete with rank 0's value, pruned, or failed."""
        states = optuna().trial.TrialState
        with self.lock:
            trial = self.running.pop(number)[0]
            trial.set_user_attr("seconds", seconds)
            kinds = {s[0] for s in statuses}
            if kinds == {"complete"}:
                self.study.tell(trial, statuses[0][1])
                self._record(number, state="COMPLETE", value=statuses[0][1], seconds=seconds)
            elif "fail" not in kinds:
                self.study.tell(trial, state=states.PRUNED)
                self._record(number, state="PRUNED", seconds=seconds)
            else:
                error = "\n".join(dict.fromkeys(s[1] for s in statuses if s[0] == "fail"))
                fail(self.study, number, error, False, trial.params)
                self._record(number, state="FAIL", error=error, seconds=seconds)

    def abandon(self, error) -> list[int]:
        """The engines' MPI job ended (``error``: the EngineError): fail every running trial with the reason.

        A trial whose own rank raised fails with that traceback, not retried (it would raise again); the
        others -- on the group of an engine that died, or interrupted when the job ended -- are retried once.
        Returns the numbers failed.
        """
        died = {int(r) for r in _DIED.search(error.job_ended or "").group(1).split(",")} \
            if _DIED.search(error.job_ended or "") else set()
        failed = []
        with self.lock:
            for number, (trial, group, ranks) in sorted(self.running.items()):
                raised = {r: tb for r, tb in error.failures.items() if r in ranks}
                if raised:
                    reason, retry = "\n".join(raised.values()), False
                elif died & set(ranks):
                    reason, retry = (f"the engine(s) of rank(s) {sorted(died & set(ranks))} of group {group} "
                                     f"(ranks {ranks}) died: {error.job_ended}"), True
                else:
                    reason, retry = (f"interrupted on group {group} (ranks {ranks}): the MPI job ended "
                                     f"({error.job_ended or 'engines lost'})"), True
                again = fail(self.study, number, reason, retry, trial.params)
                self._record(number, state="FAIL", error=reason + ("; retried" if again else ""))
                failed.append(number)
            self.running.clear()
        return failed

    def _record(self, number, **fields):
        self.records.setdefault(number, {"number": number, "state": "WAITING", "value": None, "params": {},
                                         "group": None, "ranks": None, "intermediate": {}, "error": None,
                                         "seconds": None, "retry_of": None}).update(fields)

    def snapshot(self) -> list[dict]:
        """Copies of the trial records, by trial number."""
        with self.lock:
            return [{**r, "intermediate": dict(r["intermediate"]), "params": dict(r["params"])}
                    for _, r in sorted(self.records.items())]
