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
memory on one node without the target's help. With ``max_staleness`` the check-and-apply runs under
the mutex (a spin lock on ``Compare_and_swap``), so the bound holds exactly. The update itself is
:func:`~.asynchronous.update`, shared with Hogwild; this module supplies its store (:class:`WindowStore`).
"""
from __future__ import annotations

import contextlib
import time

import numpy as np

from .asynchronous import register, run_sync, start_clock, update

TICKETS, APPLIED, MUTEX = 0, 1, 2


class ParamWindow:
    """A flat array of ``size`` elements in an MPI window on rank ``home``, and a second window of three
    int64 slots there: step tickets handed out, updates applied, a mutex (both from
    :meth:`~.comm.Communicator.window`).

    Collective: construction, :meth:`open` (writes ``initial`` on home, then starts the epoch), :meth:`close`
    and :meth:`free`. Inside the epoch every method is one-sided and completes before it returns.
    """

    def __init__(self, comm, size: int, dtype, home: int = 0):
        self.comm, self.home, self.size = comm, home, int(size)
        self.values, self.slots = comm.window(self.size, dtype, home), comm.window(3, np.int64, home)

    def open(self, initial=None) -> "ParamWindow":
        """Collective: home stores ``initial`` (zeros if None) and zeroes the slots; all start the epoch."""
        if self.comm.rank == self.home:
            self.values.put(np.zeros(self.size, self.values.dtype) if initial is None else initial)
            self.slots.put(np.zeros(3, np.int64))
        self.comm.barrier(poll=True)
        self.values.lock_all()
        self.slots.lock_all()
        return self

    def close(self) -> None:
        """Collective: end the epoch (after which every rank's operations are complete everywhere)."""
        self.values.unlock_all()
        self.slots.unlock_all()
        self.comm.barrier(poll=True)

    def free(self) -> None:
        self.values.free()
        self.slots.free()

    # -- one-sided operations, inside the epoch -------------------------------------------------------------
    def get(self, out: np.ndarray) -> np.ndarray:
        """Read the whole array into ``out``, element-wise atomically with concurrent accumulates."""
        return self.values.read(out)

    def accumulate(self, values: np.ndarray, offset: int = 0) -> None:
        """Add ``values`` to the elements from ``offset`` on, atomically per element."""
        self.values.accumulate(values, offset)

    def fetch_add(self, slot: int, value: int = 1) -> int:
        """Add ``value`` to counter ``slot`` (TICKETS or APPLIED); returns its value before (atomic)."""
        return int(self.slots.fetch_add(slot, value))

    def read(self, slot: int) -> int:
        """Counter ``slot``'s value (atomic)."""
        return int(self.slots.fetch(slot))

    def acquire(self) -> None:
        """Take the mutex: compare-and-swap 0 -> 1, retried after sleeps of 10-100 us. A sleeping waiter
        leaves its core to the holder; ``mpi4py.util.sync.Mutex`` (a queue lock whose waiters block in
        ``MPI_Recv``, which MPICH busy-polls) was 17x slower here with 4 ranks on 2 cores."""
        pause = 1e-5
        while self.slots.compare_and_swap(MUTEX, 0, 1) != 0:
            time.sleep(pause)
            pause = min(2 * pause, 1e-4)

    def release(self) -> None:
        if self.slots.compare_and_swap(MUTEX, 1, 0) != 1:
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
