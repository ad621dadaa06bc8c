"""Asynchronous SGD over MPI one-sided communication (RMA), as MagmaDNN's asynchronous training does it.

The weights live in an MPI window on rank 0, next to three counters (step tickets handed out, updates
applied, a mutex). Every rank, rank 0 included, is a worker, and no rank runs server code: a worker
reads the weights with ``Get_accumulate(NO_OP)``, computes a gradient, adds ``-lr * g`` with
``Accumulate(SUM)`` and bumps the update counter with ``Fetch_and_op``. Accumulate operations on one
location are atomic per element (MPI-3.1 §11.7.1), so concurrent updates are summed, never lost (unlike
Hogwild's racing writes), and an atomic read sees each element either before or after an update.
Staleness = the counter value when applying - the value read before fetching the weights.

Synchronisation is passive-target (MPI-3.1 §11.5.3-11.5.4): one ``Lock_all`` epoch per run, each
operation completed by ``Flush``. The standard allows an implementation to progress passive-target
operations only when the target calls MPI (§11.7.3); the window therefore carries the standard hint
``accumulate_ops=same_op_no_op`` plus MPICH's ``alloc_shm``, with which MPICH performs them in shared
memory on one node without the target's help. With ``max_staleness`` the check-and-apply is made atomic
by a spin lock on the mutex slot (``Compare_and_swap``), so the bound holds exactly. The update itself is
:func:`~.asynchronous.update`, shared with Hogwild; this module supplies its store (:class:`WindowStore`).
"""
from __future__ import annotations

import contextlib
import time

import numpy as np

from .asynchronous import register, run_sync, start_clock, update

TICKETS, APPLIED, MUTEX = 0, 1, 2


class ParamWindow:
    """A flat array of ``size`` elements plus three int64 counters in MPI windows on rank ``home``.

    Collective: construction, :meth:`open` (writes ``initial`` on home, then starts a ``Lock_all`` epoch),
    :meth:`close` and :meth:`free`. Inside the epoch every method is one-sided and completes before it
    returns.
    """

    def __init__(self, comm, size: int, dtype, home: int = 0):
        from mpi4py.util.dtlib import from_numpy_dtype
        self.comm, self.MPI, self.home, self.size = comm, comm.MPI, home, int(size)
        self.dtype = np.dtype(dtype)
        self.type = from_numpy_dtype(self.dtype)
        MPI, mine = self.MPI, comm.rank == home
        info = MPI.Info.Create()
        info.Set("accumulate_ops", "same_op_no_op")  # MPI-3 hint: only one op (or NO_OP) per location
        info.Set("alloc_shm", "true")                # MPICH: window in shared memory where ranks share a node
        self.win = MPI.Win.Allocate(self.size * self.dtype.itemsize if mine else 0, self.dtype.itemsize,
                                    info, comm.comm)
        self.counters = MPI.Win.Allocate(3 * 8 if mine else 0, 8, info, comm.comm)
        info.Free()
        self._one, self._zero, self._arg, self._out = (np.array([v], np.int64) for v in (1, 0, 0, 0))
        self._nothing = np.zeros(1, self.dtype)

    def open(self, initial=None) -> "ParamWindow":
        """Collective: home stores ``initial`` (zeros if None) and zeroes the counters; all start the epoch."""
        MPI = self.MPI
        if self.comm.rank == self.home:
            values = np.zeros(self.size, self.dtype) if initial is None else np.ascontiguousarray(initial, self.dtype)
            for win, data, t in ((self.win, values, self.type), (self.counters, np.zeros(3, np.int64), MPI.INT64_T)):
                win.Lock(self.home, MPI.LOCK_EXCLUSIVE)
                win.Put([data, t], self.home)
                win.Unlock(self.home)
        self.comm.barrier(poll=True)
        self.win.Lock_all()
        self.counters.Lock_all()
        return self

    def close(self) -> None:
        """Collective: end the epoch (after which every rank's operations are complete everywhere)."""
        self.win.Unlock_all()
        self.counters.Unlock_all()
        self.comm.barrier(poll=True)

    def free(self) -> None:
        self.win.Free()
        self.counters.Free()

    # -- one-sided operations, inside the epoch -------------------------------------------------------------
    def get(self, out: np.ndarray) -> np.ndarray:
        """Read the whole array into ``out``, element-wise atomically with concurrent accumulates."""
        self.win.Get_accumulate([self._nothing, 1, self.type], [out, self.type], self.home,
                                [0, self.size, self.type], op=self.MPI.NO_OP)
        self.win.Flush(self.home)
        return out

    def accumulate(self, values: np.ndarray, offset: int = 0) -> None:
        """Add ``values`` to the elements from ``offset`` on, atomically per element."""
        self.win.Accumulate([values, self.type], self.home, [offset, values.size, self.type], op=self.MPI.SUM)
        self.win.Flush(self.home)

    def fetch_add(self, slot: int, value: int = 1) -> int:
        """Add ``value`` to counter ``slot``; returns its value before (atomic)."""
        self._arg[0] = value
        self.counters.Fetch_and_op([self._arg, self.MPI.INT64_T], [self._out, self.MPI.INT64_T], self.home, slot,
                                   op=self.MPI.SUM)
        self.counters.Flush(self.home)
        return int(self._out[0])

    def read(self, slot: int) -> int:
        """Counter ``slot``'s value (atomic)."""
        self.counters.Fetch_and_op([self._arg, self.MPI.INT64_T], [self._out, self.MPI.INT64_T], self.home, slot,
                                   op=self.MPI.NO_OP)
        self.counters.Flush(self.home)
        return int(self._out[0])

    def _swap(self, new, expected) -> int:
        self.counters.Compare_and_swap([new, self.MPI.INT64_T], [expected, self.MPI.INT64_T],
                                       [self._out, self.MPI.INT64_T], self.home, MUTEX)
        self.counters.Flush(self.home)
        return int(self._out[0])

    def acquire(self) -> None:
        """Take the mutex (spin with short sleeps)."""
        pause = 1e-5
        while self._swap(self._one, self._zero) != 0:
            time.sleep(pause)
            pause = min(2 * pause, 1e-4)

    def release(self) -> None:
        if self._swap(self._zero, self._one) != 1:
            raise RuntimeError("ParamWindow.release: the mutex was not held")


class WindowStore:
    """RMA's :class:`~.asynchronous.Store`: the weights in a :class:`ParamWindow`, counted by its APPLIED
    counter, made exclusive by its mutex."""

    def __init__(self, win: ParamWindow):
        self.win = win

    def version(self) -> int:
        return self.win.read(APPLIED)

    def read(self, out: np.ndarray) -> np.ndarray:
        return self.win.get(out)

    def add(self, delta: np.ndarray) -> None:
        self.win.accumulate(delta)

    def count(self) -> int:
        return self.win.fetch_add(APPLIED)

    @contextlib.contextmanager
    def exclusive(self):
        self.win.acquire()
        try:
            yield
        finally:
            self.win.release()


@register("rma", "asynchronous one-sided MPI windows (RMA)", workers=lambda job: range(job.comm.size))
def run_rma(job):
    """Every rank trains on the window until the step tickets run out; returns (logs, weights, wall)."""
    comm = job.comm
    if not hasattr(comm, "MPI"):  # the serial stand-in: one worker, plain SGD
        return run_sync(job)
    fm = job.flat_model()
    comm.bcast_(fm.flat)
    log = job.log(comm.rank, initial=fm.flat.copy() if comm.rank == 0 else None)
    win = ParamWindow(comm, fm.flat.size, fm.flat.dtype).open(fm.flat)
    store, batches = WindowStore(win), job.batches(comm.rank, comm.size)
    t0 = start_clock(comm)
    while win.fetch_add(TICKETS) < job.steps:
        update(job, store, fm, batches, comm.rank, log, t0)
    comm.barrier(poll=True)  # every update has landed
    weights = win.get(np.empty_like(fm.flat))
    wall = time.perf_counter() - t0
    win.close()
    win.free()
    return [log], weights, wall
