"""Hogwild!: threads of one process update one shared set of weights in place, without locks.

Recht, Re, Wright & Niu 2011, "HOGWILD!: A Lock-Free Approach to Parallelizing Stochastic Gradient
Descent" (NeurIPS): when each update is small, letting processors overwrite each other's writes costs
little convergence and removes all locking. Each thread here builds its own model (own Parameters,
graph and ``.grad``; grad mode is thread-local in hpcai) whose parameters are *views* of the one shared
flat array, and applies ``w -= lr * g`` to it in place. numpy's BLAS calls and ufunc loops release the
GIL, so threads overlap on the array work; Python-level overhead still takes turns on the GIL, so small
models gain little from more threads (larger ones gain more).

Small locks guard only the bookkeeping (the step budget and the update counter that measures
staleness), never the weights. With ``max_staleness`` the check-and-apply runs under the counter's lock,
so the bound holds exactly: a thread whose gradient is too stale drops it and recomputes on fresh weights.
The update itself is :func:`~.asynchronous.update`, shared with RMA; this module supplies its store.
"""
from __future__ import annotations

import contextlib
import threading
import time

import numpy as np

from .asynchronous import register, update


@contextlib.contextmanager
def _one_blas_thread_each(threads: int):
    """Limit BLAS to one thread while the worker threads run (when threadpoolctl is installed): the workers
    are the parallelism, and each of them starting a BLAS thread pool of its own oversubscribes the cores
    (on 2 busy cores a 64-256-10 MLP ran 25x slower)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if threadpool_limits is None or threads < 2:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


class SharedArray:
    """Hogwild's :class:`~.asynchronous.Store`: the one flat array every thread's model views, written in place
    without a lock; a re-entrant lock guards only the update counter (and, with a bound, check-and-apply)."""

    def __init__(self, flat: np.ndarray):
        self.flat, self.applied, self.lock = flat, 0, threading.RLock()

    def version(self) -> int:
        return self.applied

    def read(self, out: np.ndarray) -> np.ndarray:
        if out is not self.flat:  # a thread's own model already views the shared weights
            np.copyto(out, self.flat)
        return out

    def add(self, delta: np.ndarray) -> None:
        np.add(self.flat, delta, out=self.flat)  # the lock-free Hogwild write, racing with the other threads

    def count(self) -> int:
        with self.lock:
            self.applied += 1
            return self.applied - 1

    def exclusive(self):
        return self.lock


@register("hogwild", "Hogwild threads (lock-free, shared memory)", workers=lambda job: range(job.threads),
          mpi=False)
def run_hogwild(job):
    """``job.threads`` threads share ``job.steps`` updates of one weight array; returns (logs, weights, wall)."""
    store = SharedArray(job.flat_model().flat)  # the one set of weights every thread reads and writes in place
    logs = [job.log(i) for i in range(job.threads)]
    logs[0].initial = store.flat.copy()
    budget, issued = threading.Lock(), [0]  # the step budget, handed out one update at a time
    clock, failed = [], []
    start = threading.Barrier(job.threads, action=lambda: clock.append(time.perf_counter()))

    def work(i):
        try:
            fm = job.flat_model(flat=store.flat)  # own graph and grads, shared weights
            batches = job.batches(i, job.threads)
            start.wait()
            while not failed:
                with budget:
                    if issued[0] >= job.steps:
                        return
                    issued[0] += 1
                update(job, store, fm, batches, i, logs[i], clock[0])
        except BaseException as exc:  # noqa: BLE001  (re-raised in the calling thread)
            failed.append(exc)
            start.abort()

    workers = [threading.Thread(target=work, args=(i,), name=f"hogwild-{i}", daemon=True)
               for i in range(job.threads)]
    with _one_blas_thread_each(job.threads):
        for t in workers:
            t.start()
        for t in workers:
            t.join()
    if failed:
        raise failed[0]
    return logs, store.flat.copy(), time.perf_counter() - clock[0]
