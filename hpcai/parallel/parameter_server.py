"""Parameter server over two-sided MPI: rank 0 owns the weights, workers push gradients, pull weights back.

Dean et al. 2012 ("Large Scale Distributed Deep Networks", DistBelief's Downpour SGD) and Li et al.
2014 ("Scaling Distributed Machine Learning with the Parameter Server", OSDI): the server applies each
gradient the moment it arrives, with no barrier between workers, so a slow worker delays only itself.
Every rank >= 1 is a worker; rank 0 only serves. Each push is answered with the fresh weights (push and
pull fused into one round trip). Messages are flat float64 buffers whose first entry is a version.

Protocol (tags)::

    worker -> server  PUSH     [version read, gradient...]
    server -> worker  APPLIED  [new version, weights...]   applied
                      STALE    [version, weights...]       older than max_staleness: dropped, recompute
                      STOP     [...]                       the step budget is spent (content unused)
    worker -> server  DONE     [...]                       the worker leaves; the server ends after all

Every message has the same size, so each side receives into one buffer of its own. The server receives
from any source through :meth:`Communicator.recv_`, which polls, so it never occupies a core while idle. Staleness = server version at apply time - the version the worker computed on. With a single rank
there is no worker: the run is plain SGD (identical to ``"sync"`` at one rank).
"""
from __future__ import annotations

import time

import numpy as np

from .asynchronous import WorkerLog, register, run_sync, start_clock

PUSH, APPLIED, STALE, STOP, DONE = 7101, 7102, 7103, 7104, 7105


def _workers(job):
    return range(1, job.comm.size) if job.comm.size > 1 else range(1)


def serve(job, w, t0) -> WorkerLog:
    """Rank 0: apply pushed gradients to ``w`` in arrival order until every worker has said DONE."""
    comm = job.comm
    inbox, outbox = np.empty(w.size + 1), np.empty(w.size + 1)
    log = job.log(None, initial=w.copy())
    version, active = 0, comm.size - 1
    while active:
        source, tag = comm.recv_(inbox)  # any worker, any tag; polled, so an idle server yields its core
        if tag == DONE:
            active -= 1
            continue
        if version >= job.steps:
            comm.wait(comm.isend_(outbox, source, STOP))
            continue
        seen, reply = int(inbox[0]), STALE
        if job.max_staleness is None or version - seen <= job.max_staleness:
            np.subtract(w, job.lr(seen) * inbox[1:], out=w, casting="same_kind")
            version, reply = version + 1, APPLIED
            if version % job.record_every == 0:
                log.snapshots.append((time.perf_counter() - t0, version, w.copy()))
        outbox[0], outbox[1:] = version, w
        comm.wait(comm.isend_(outbox, source, reply))
    return log


def work(job, fm, t0) -> WorkerLog:
    """Rank >= 1: compute a gradient, push it, take the weights that come back, until told to STOP."""
    comm, rank = job.comm, job.comm.rank
    outbox, inbox = np.empty(fm.flat.size + 1), np.empty(fm.flat.size + 1)
    log, seen = job.log(rank), 0
    batches = job.batches(rank - 1, comm.size - 1)
    while True:
        loss, g = job.gradient(fm, batches, rank)
        outbox[0], outbox[1:] = seen, g
        comm.wait(comm.isend_(outbox, 0, PUSH))
        _, tag = comm.recv_(inbox, 0)
        if tag == STOP:
            break
        version = int(inbox[0])
        fm.flat[...] = inbox[1:]
        if tag == APPLIED:
            log.update(version - 1 - seen, time.perf_counter() - t0, loss)
        else:
            log.dropped += 1
        seen = version
    comm.wait(comm.isend_(outbox, 0, DONE))
    return log


@register("ps", "asynchronous parameter server (MPI)", workers=_workers)
def run_parameter_server(job):
    """Rank 0 serves, ranks >= 1 work; returns (this rank's logs, final weights, wall time) on every rank."""
    if job.comm.size == 1:
        return run_sync(job)
    fm = job.flat_model()
    job.comm.bcast_(fm.flat)
    t0 = start_clock(job.comm)
    log = serve(job, fm.flat, t0) if job.comm.rank == 0 else work(job, fm, t0)
    job.comm.bcast_(fm.flat)  # the server's final weights, everywhere
    return [log], fm.flat.copy(), time.perf_counter() - t0
