"""Hogwild!: threads of one process update one shared set of weights in place, without locks.

Recht, Re, Wright & Niu 2011, "HOGWILD!: A Lock-Free Approach to Parallelizing Stochastic Gradient
Descent" (NeurIPS): when each update is small, letting processors overwrite each other's writes costs
little convergence and removes all locking. Each thread here builds its own model (own Parameters,
graph and ``.grad``; grad mode is thread-local in hpcai) whose parameters are *views* of the one shared
flat array, and applies ``w -= lr * g`` to it in place. numpy's BLAS calls and ufunc loops release the
GIL, so threads overlap on the array work; Python-level overhead still takes turns on the GIL, so small
models gain little from more threads (larger ones gain more).

A small lock guards only the bookkeeping (the step budget and the update counter that measures
staleness), never the weights. With ``max_staleness`` the check-and-apply runs under that lock, so the
bound holds exactly: a thread whose gradient is too stale drops it and recomputes on fresh weights.
"""
from __future__ import annotations

import contextlib
import threading
import time

import numpy as np

from .asynchronous import register


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


@register("hogwild", workers=lambda job: range(job.threads), mpi=False)
def run_hogwild(job):
    """``job.threads`` threads share ``job.steps`` updates of one weight array; returns (logs, weights, wall)."""
    shared = job.flat_model().flat  # the one set of weights every thread reads and writes in place
    logs = [job.log(i) for i in range(job.threads)]
    logs[0].initial = shared.copy()
    lock = threading.Lock()
    count = {"issued": 0, "applied": 0}
    clock, failed = [], []
    start = threading.Barrier(job.threads, action=lambda: clock.append(time.perf_counter()))

    def one_update(i, fm, batches, log, t0):
        seen = count["applied"]  # the version of the weights this gradient is computed on
        while True:
            x, y = next(batches)
            tc = time.perf_counter()
            loss, g = fm.gradient(x, y)
            job.straggle(i, time.perf_counter() - tc)
            g *= job.lr(seen)
            if job.max_staleness is None:
                np.subtract(shared, g, out=shared)  # the lock-free Hogwild write, racing with the other threads
                with lock:  # counted once it is in the weights, so a reader's version never runs ahead of them
                    v = count["applied"]
                    count["applied"] += 1
                break
            with lock:
                v = count["applied"]
                if v - seen <= job.max_staleness:
                    np.subtract(shared, g, out=shared)
                    count["applied"] += 1
                    break
            log.dropped += 1
            seen = v
        now = time.perf_counter() - t0
        log.update(v - seen, now, loss)
        if (v + 1) % job.record_every == 0:
            log.snapshots.append((now, v + 1, shared.copy()))

    def work(i):
        try:
            fm = job.flat_model(flat=shared)  # own graph and grads, shared weights
            batches = job.batches(i, job.threads)
            start.wait()
            while not failed:
                with lock:
                    if count["issued"] >= job.steps:
                        return
                    count["issued"] += 1
                one_update(i, fm, batches, logs[i], clock[0])
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
    return logs, shared.copy(), time.perf_counter() - clock[0]
