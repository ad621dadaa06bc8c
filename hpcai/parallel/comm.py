"""Communicator: the MPI calls training needs, over mpi4py, with a serial stand-in of the same shape.

Buffer methods (``allreduce_``, ``bcast_``, ...) work in place on numpy or cupy arrays; queued GPU work
is synchronised first, and cupy buffers are staged through the host unless the MPI library is known to
be CUDA-aware (``HPCAI_CUDA_AWARE_MPI=1``). fp16 and bf16 buffers (compressed gradients) travel as 2-byte
words and are reduced in their own format: by MPI's ``FLOAT16_T`` where the library has it, else by a
user-defined op running the numpy/ml_dtypes ufunc, which computes in float32 and rounds once (correctly:
float32 has the 2p+2 significand bits that make this double rounding harmless). Object methods
(``allreduce_obj``, ...) move small Python values between our own ranks. :func:`install_abort_hook` turns
an unhandled exception on any rank into an ``MPI_Abort`` of the whole job, so one failing rank never leaves
the others waiting forever. :func:`default_comm` is how applications pick MPI's world when started by
``mpiexec`` and run serially otherwise.

Stall detection (after Horovod's stall inspector): the buffer collectives wait by polling, so a rank waiting
for slower ones yields its core instead of spinning at 100 %. A rank that has waited ``stall_warning``
seconds (60 by default) in a collective asks the others, over a private duplicate of the communicator,
which collective they wait in, and the lowest waiting rank warns (:class:`StallWarning`) naming the ranks
that have not arrived; after ``stall_timeout`` seconds (default: never) the job is ended with MPI_Abort and
a message naming them. Set both per communicator (``comm.stall_warning``, ``comm.stall_timeout``, or
``hvd.init(stall_warning=..., stall_timeout=...)``) or for a whole job with ``HPCAI_STALL_WARNING`` and
``HPCAI_STALL_TIMEOUT`` (seconds; 0 turns one off).
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import traceback
import warnings

import ml_dtypes
import numpy as np

from .. import backend, checks

_OPS = ("sum", "max", "min", "prod")
ABORT_GRACE = 0.2  # seconds between a rank's last words and MPI_Abort, for the launcher to forward them
SPIN_SECONDS, MIN_SPIN = 2e-3, 5e-5  # wait/probe: poll at full speed (yielding the core) at most/least this long,
MAX_PAUSE = 1e-3                     # then sleep between polls, the pauses doubling from 10 us up to this
LAUNCHER_SIZES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE")  # ranks started, as MPI launchers tell them
LAUNCHER_RANKS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")  # this process's rank, as they tell it
STALL_WARNING = 60.0  # seconds in one collective before a StallWarning (Horovod's default), unless set
STALL_QUIET = 0.5  # a wait shorter than this never looks at the stall channel (short waits pay nothing for it)
STALL_ASK = 1.0  # seconds a stalled rank collects the other ranks' answers
MAX_LONG_PAUSE = 0.01  # the longest sleep between polls once a wait is long
_ASK, _ANSWER = 1, 2  # tags on the private duplicate: "which collective do you wait in?" and its answer
_UFUNCS = {"sum": np.add, "max": np.maximum, "min": np.minimum, "prod": np.multiply}
_HALF = {np.dtype(np.float16): "FLOAT16_T", np.dtype(ml_dtypes.bfloat16): "BFLOAT16_T"}  # MPI's names


class StallWarning(RuntimeWarning):
    """Ranks have waited long in a collective that other ranks have not reached (see the module docstring)."""


def _stall_seconds(name: str, default):
    """The setting ``name`` from the environment: seconds > 0, None where it is 0/off/none, else ``default``."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if text.lower() in ("0", "off", "none", "never"):
        return None
    try:
        return checks.number(name, float(text), 0.0, low_open=True)
    except ValueError:
        raise ValueError(f"{name}: expected a number of seconds > 0 (0 or off: never), got {text!r}") from None


def stall_setting(name: str, value):
    """``value`` for ``stall_warning``/``stall_timeout`` checked: seconds > 0, or None/0 for never."""
    if value is None or (not isinstance(value, bool) and isinstance(value, (int, float)) and value == 0):
        return None
    return checks.number(f"{name} (seconds, or None/0 for never)", value, 0.0, low_open=True)


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError:
        raise ImportError("MPI needs mpi4py and an MPI library: pip install 'hpcai[mpi]'") from None
    return MPI


def _check_op(op: str) -> str:
    if op not in _OPS:
        raise ValueError(f"op: expected one of {_OPS}, got {op!r}")
    return op


_yield = getattr(os, "sched_yield", lambda: time.sleep(0))
_spin = SPIN_SECONDS  # this process's current spin budget: see _poll


def _poll(ready, timeout: float | None = None) -> bool:
    """Call ``ready()`` until it returns true (then True) or ``timeout`` seconds pass (then False).

    First it polls at full speed with ``os.sched_yield()`` between calls: on a core of its own the yield
    returns at once, so a message that comes soon is seen about as soon as raw MPI would see it; on a shared
    core it lets the process that will send the message run first. Past a spin budget it sleeps between
    calls, the pauses doubling up to MAX_PAUSE, so a rank that waits long costs its core almost nothing and
    signal handlers (Ctrl-C) still run. (A sleep lasts at least ~80 us on Linux, timer slack included:
    sleeping after 50 us of polling made a message round trip take 0.2 to 0.6 ms instead of 40 us.)

    The budget adapts, per process: it doubles (up to SPIN_SECONDS) after a wait that a full spin would
    have covered and halves (down to MIN_SPIN) after one that outlasted it, so a rank whose waits are long,
    say for slower ranks on an oversubscribed node, soon stops spinning through each of them.
    """
    global _spin
    start, pause, done = time.perf_counter(), 0.0, ready()
    while not done:
        waited = time.perf_counter() - start
        if timeout is not None and waited > timeout:
            break
        if waited < _spin:
            _yield()
        else:
            pause = min(2 * pause, MAX_PAUSE) if pause else min(1e-5, MAX_PAUSE)
            time.sleep(pause)
        done = ready()
    waited = time.perf_counter() - start
    _spin = min(2 * _spin, SPIN_SECONDS) if waited <= SPIN_SECONDS else max(_spin / 2, MIN_SPIN)
    return done


class SerialCommunicator:
    """One rank, no MPI: every collective is the identity, so the same code runs in a plain process."""

    rank, size, local_rank, local_size = 0, 1, 0, 1

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def allreduce_(self, buf, op: str = "sum"):
        _check_op(op)
        return buf

    def bcast_(self, buf, root: int = 0):
        return buf

    def allgather(self, buf, out=None):
        if out is None:
            return backend.get_array_module(buf).stack([buf])
        _check_gather_out(out, buf, 1)
        out[0] = buf
        return out

    def allreduce_obj(self, value, op: str = "sum"):
        _check_op(op)
        return value

    def bcast_obj(self, value, root: int = 0):
        return value

    def allgather_obj(self, value) -> list:
        return [value]

    def gather_obj(self, value, root: int = 0):
        return [value]

    def average(self, value: float) -> float:
        return float(value)

    def barrier(self, poll: bool = False) -> None:
        pass

    def split(self, color: int, key: int = 0):
        return self

    def dup(self):
        return self

    def free(self) -> None:
        pass

    def send_(self, *args, **kwargs):
        raise RuntimeError("point-to-point messages need MPI: the serial stand-in has no other rank")

    isend_ = recv_ = probe = send_

    def abort(self, code: int = 1) -> None:
        raise SystemExit(code)

    def __repr__(self) -> str:
        return "SerialCommunicator()"


class Communicator(SerialCommunicator):
    """An MPI communicator (``MPI.COMM_WORLD`` by default, or any sub-communicator)."""

    def __init__(self, comm=None):
        MPI = _mpi()
        self.MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        self.cuda_aware = os.environ.get("HPCAI_CUDA_AWARE_MPI", "0") == "1"
        self._op = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN, "prod": MPI.PROD}
        self._half_ops = {}
        # stall detection: a private duplicate (its messages never match the user's), and the number of
        # collectives started on this communicator, the same on every rank
        self._stall_comm, self._collectives, self._stall_sends = self.comm.Dup(), 0, []
        self.stall_warning = _stall_seconds("HPCAI_STALL_WARNING", STALL_WARNING)
        self.stall_timeout = _stall_seconds("HPCAI_STALL_TIMEOUT", None)

    # -- buffers, in place ---------------------------------------------------------------------------
    def _host(self, buf):
        """A buffer MPI can read: the array itself, or a host copy of a cupy array (after a sync)."""
        if backend.get_array_module(buf) is np:
            if not buf.flags.c_contiguous:
                raise ValueError("buf: MPI needs a C-contiguous array; pass np.ascontiguousarray(buf)")
            return buf
        backend.synchronize(backend.device_of(buf))
        return buf if self.cuda_aware else backend.to_host(buf)

    @staticmethod
    def _back(buf, host):
        if host is not buf:
            buf.set(host)  # cupy: copy the result back onto the device
        return buf

    @staticmethod
    def _words(host):
        """``host`` as MPI can address it: fp16/bf16 (unknown to some MPIs, to mpi4py for bf16) as uint16 words."""
        return host.view(np.uint16) if host.dtype in _HALF else host

    def _reduction(self, host, op: str):
        """(message, MPI op) reducing ``host`` with ``op``; fp16/bf16 by MPI's own type or a ufunc op."""
        if host.dtype not in _HALF:
            return host, self._op[op]
        native = getattr(self.MPI, _HALF[host.dtype], self.MPI.DATATYPE_NULL)
        if native != self.MPI.DATATYPE_NULL:
            return [host.view(np.uint16), native], self._op[op]
        key = (host.dtype, op)
        if key not in self._half_ops:
            dtype, ufunc = host.dtype, _UFUNCS[op]

            def reduce(inbuf, inoutbuf, datatype):
                out = np.frombuffer(inoutbuf, dtype)
                ufunc(np.frombuffer(inbuf, dtype), out, out=out)
            self._half_ops[key] = self.MPI.Op.Create(reduce, commute=True)
        return [host.view(np.uint16), self.MPI.UINT16_T], self._half_ops[key]

    def allreduce_(self, buf, op: str = "sum"):
        """Reduce ``buf`` over all ranks, in place; returns ``buf``."""
        if type(buf) is np.ndarray and buf.flags.c_contiguous and buf.dtype not in _HALF:  # the common case
            self._complete(self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self._op[_check_op(op)]), "allreduce_")
            return buf
        host = self._host(buf)
        message, mpi_op = self._reduction(host, _check_op(op))
        self._complete(self.comm.Iallreduce(self.MPI.IN_PLACE, message, op=mpi_op), "allreduce_")
        return self._back(buf, host)

    def bcast_(self, buf, root: int = 0):
        """Overwrite ``buf`` on every rank with rank ``root``'s, in place; returns ``buf``."""
        host = self._host(buf)
        self._complete(self.comm.Ibcast(self._words(host), root=root), "bcast_")
        return self._back(buf, host)

    def allgather(self, buf, out=None):
        """An array of shape (size, *buf.shape) holding every rank's ``buf`` in rank order: a new one, or
        ``out`` (a C-contiguous host array of that shape and dtype, reused so a step allocates nothing).
        ``buf`` may be ``out[rank]`` itself: then this rank's row stays where it is (MPI's in-place gather)."""
        host = self._host(buf)
        if out is not None:
            _check_gather_out(out, host, self.size)
            mine = out[self.rank]
            send = self.MPI.IN_PLACE if (host.__array_interface__["data"][0] == mine.__array_interface__["data"][0]
                                         and host.shape == mine.shape) else self._words(host)
            self._complete(self.comm.Iallgather(send, self._words(out)), "allgather")
            return out
        out = np.empty((self.size,) + host.shape, host.dtype)
        self._complete(self.comm.Iallgather(self._words(host), self._words(out)), "allgather")
        return out if backend.get_array_module(buf) is np else backend.to_device(out, backend.device_of(buf))

    # -- small Python values ------------------------------------------------------------------------
    def allreduce_obj(self, value, op: str = "sum"):
        return self.comm.allreduce(value, op=self._op[_check_op(op)])

    def bcast_obj(self, value, root: int = 0):
        return self.comm.bcast(value, root=root)

    def allgather_obj(self, value) -> list:
        return self.comm.allgather(value)

    def gather_obj(self, value, root: int = 0):
        return self.comm.gather(value, root=root)

    def average(self, value: float) -> float:
        """The mean of a number over all ranks (how metrics are reported)."""
        total = np.array([float(value)])
        self._complete(self.comm.Iallreduce(self.MPI.IN_PLACE, total, op=self.MPI.SUM), "average")
        return float(total[0]) / self.size

    def barrier(self, poll: bool = False) -> None:
        """Return once every rank has called it. Plain: MPI_Barrier, the tightest alignment (for timings).
        ``poll=True``: an Ibarrier completed by :meth:`wait`, so a rank waiting for slower ones yields its
        core to them, and a signal (Ctrl-C) interrupts it."""
        if not poll:
            self.comm.Barrier()
        elif self.size > 1:
            self._complete(self.comm.Ibarrier(), "barrier")

    def wait(self, request, status=None):
        """Complete an MPI ``request`` and return its status, by polling (see :func:`_poll`): an idle rank
        yields its core, and Python's signal handlers still run."""
        status = status if status is not None else self.MPI.Status()
        _poll(lambda: request.Test(status))
        return status

    # -- waiting in a collective, and stall detection ---------------------------------------------------------
    def _complete(self, request, what: str) -> None:
        """Wait for this rank's part of a collective (``what``, for messages): polling (see :func:`_poll`), so
        the core is yielded; a wait past STALL_QUIET s joins stall detection. A KeyboardInterrupt is raised
        once this rank's part is done, as a blocking MPI call would."""
        self._collectives += 1
        interrupted = None
        while True:  # Ctrl-C / an engine interrupt: this rank's part is finished first, as in a blocking call,
            try:     # so no collective is left half-posted to pair with the next run's (a hang on reused engines)
                if not _poll(request.Test, STALL_QUIET):
                    self._long_wait(request, what)
                break
            except KeyboardInterrupt as e:
                interrupted = e
        if interrupted is not None:
            raise interrupted

    def _long_wait(self, request, what: str) -> None:
        """Wait on, answering other ranks' questions; at ``stall_warning`` s ask them and warn, at
        ``stall_timeout`` s ask them and end the job, naming the ranks that have not arrived."""
        seq, start, pause, warned = self._collectives, time.monotonic() - STALL_QUIET, 1e-4, False
        while not request.Test():
            self._answer()
            waited = time.monotonic() - start
            if self.stall_timeout is not None and waited >= self.stall_timeout:
                report = self._stall_report(request, seq, what, waited)
                if report is not None:
                    sys.stderr.write(f"[hpcai rank {self.rank}/{self.size}] {report}; stall_timeout="
                                     f"{self.stall_timeout:g} s reached, ending the job (MPI_Abort)\n")
                    self.abort(1)
            elif not warned and self.stall_warning is not None and waited >= self.stall_warning:
                warned, report = True, self._stall_report(request, seq, what, waited, lowest_only=True)
                if report is not None:
                    warnings.warn(f"rank {self.rank}: {report}", StallWarning, stacklevel=4)
            time.sleep(pause)
            pause = min(2 * pause, MAX_LONG_PAUSE)

    def _stall_report(self, request, seq: int, what: str, waited: float, lowest_only: bool = False):
        """Ask every other rank which collective it waits in; the report naming the ranks that have not
        arrived, or None (the collective completed meanwhile, or a lower waiting rank reports)."""
        ask = np.array([seq, 0], np.int64)
        self._stall_sends = [s for s in self._stall_sends if not s[0].Test()]
        self._stall_sends += [(self._stall_comm.Isend(ask, r, _ASK), ask) for r in range(self.size) if r != self.rank]
        answers, status, deadline = {}, self.MPI.Status(), time.monotonic() + STALL_ASK
        while len(answers) < self.size - 1 and time.monotonic() < deadline:
            self._answer()
            while self._stall_comm.Iprobe(self.MPI.ANY_SOURCE, _ANSWER, status):
                reply = np.empty(2, np.int64)
                self._stall_comm.Recv(reply, status.Get_source(), _ANSWER)
                if reply[0] == seq:
                    answers[status.Get_source()] = int(reply[1])
            if request.Test():
                return None
            time.sleep(1e-3)
        waiting = sorted([self.rank] + [r for r, n in answers.items() if n == seq])
        if lowest_only and waiting[0] != self.rank:
            return None
        missing = [r for r in range(self.size) if r not in waiting]
        if not missing:  # every rank is there: the collective is merely slow
            return None
        elsewhere = {r: n for r, n in sorted(answers.items()) if n != seq}
        silent = [r for r in missing if r not in elsewhere]
        return (f"rank(s) {missing} have not reached {what} (collective #{seq} on {self!r}), where rank(s) "
                f"{waiting} have waited {waited:.0f} s"
                + (f"; rank(s) {list(elsewhere)} wait in collective(s) #{list(elsewhere.values())} instead"
                   if elsewhere else "")
                + (f"; rank(s) {silent} do not answer (busy outside MPI: computing, sleeping or blocked)"
                   if silent else ""))

    def _answer(self) -> None:
        """Answer the questions of stalled ranks: the number of the collective this rank waits in."""
        status = self.MPI.Status()
        while self._stall_comm.Iprobe(self.MPI.ANY_SOURCE, _ASK, status):
            ask = np.empty(2, np.int64)
            self._stall_comm.Recv(ask, status.Get_source(), _ASK)
            reply = np.array([ask[0], self._collectives], np.int64)
            self._stall_sends.append((self._stall_comm.Isend(reply, status.Get_source(), _ANSWER), reply))

    def split(self, color: int, key: int = 0) -> "Communicator":
        """Ranks with the same ``color`` form a new communicator, ordered by ``key``."""
        return Communicator(self.comm.Split(color, key))

    def dup(self) -> "Communicator":
        """The same ranks in a new context: its messages never match this communicator's."""
        return Communicator(self.comm.Dup())

    def free(self) -> None:
        """Release a communicator made by :meth:`split` or :meth:`dup` (MPI has a few thousand at most)."""
        self._stall_comm.Free()
        self.comm.Free()

    # -- point to point, on buffers -------------------------------------------------------------------
    def _peer(self, rank, name):
        if rank is None:
            return self.MPI.ANY_SOURCE
        return checks.rank(name, rank, self.size)

    def _tag(self, tag):
        if tag is None:
            return self.MPI.ANY_TAG
        return checks.integer("tag (MPI's guaranteed range)", tag, 0, 32767)

    def send_(self, buf, dest: int, tag: int = 0) -> None:
        """Send a C-contiguous numpy/cupy array to rank ``dest`` (blocking; bytes as they are, never pickled)."""
        self.comm.Send(self._words(self._host(buf)), dest=self._peer(dest, "dest"), tag=self._tag(tag))

    def isend_(self, buf, dest: int, tag: int = 0):
        """Start sending ``buf`` and return the request (complete it with :meth:`wait`); ``buf`` must stay
        unchanged until then (mpi4py's request holds the buffer, a cupy array's host copy included)."""
        return self.comm.Isend(self._words(self._host(buf)), dest=self._peer(dest, "dest"), tag=self._tag(tag))

    def recv_(self, buf, source: int | None = None, tag: int | None = None) -> tuple:
        """Receive into ``buf`` (``None``: any source / any tag), polling so the core is yielded; returns
        (source, tag). A message of another size than ``buf`` raises."""
        host = self._host(buf)
        status = self.wait(self.comm.Irecv(self._words(host), source=self._peer(source, "source"),
                                           tag=self._tag(tag)))
        if status.Get_count(self.MPI.BYTE) != host.nbytes:
            raise ValueError(f"recv_: a message of {status.Get_count(self.MPI.BYTE)} bytes arrived for a buffer "
                             f"of {host.nbytes}")
        self._back(buf, host)
        return status.Get_source(), status.Get_tag()

    def test(self, request) -> bool:
        """Whether ``request`` has completed (completing it if so), without waiting."""
        return request.Test()

    def probe(self, source: int | None = None, tag: int | None = None, timeout: float | None = None):
        """Wait for a message without receiving it: (source, tag, bytes), or None after ``timeout`` seconds.
        Polls like :meth:`wait`, so a waiting rank yields its core and signals are handled."""
        status, src, tg = self.MPI.Status(), self._peer(source, "source"), self._tag(tag)
        if not _poll(lambda: self.comm.Iprobe(source=src, tag=tg, status=status), timeout):
            return None
        return status.Get_source(), status.Get_tag(), status.Get_count(self.MPI.BYTE)

    # -- one-sided ----------------------------------------------------------------------------------
    def _rma_info(self):
        info = self.MPI.Info.Create()
        info.Set("accumulate_ops", "same_op_no_op")  # MPI-3 hint: only one op (or NO_OP) per location
        info.Set("alloc_shm", "true")                # MPICH: window in shared memory where ranks share a node
        return info

    def window(self, count: int, dtype, home: int = 0) -> "Window":
        """Collective: an RMA window of ``count`` elements of ``dtype`` held by rank ``home``."""
        return Window(self, checks.integer("count", count, 0), np.dtype(dtype), self._peer(home, "home"))

    def counter(self, home: int = 0):
        """Collective: an atomic int64 counter held by rank ``home`` (``mpi4py.util.sync.Counter``):
        ``next(incr=1)`` adds and returns the value before, ``free()`` releases it."""
        from mpi4py.util import sync
        info = self._rma_info()
        try:
            return sync.Counter(0, typecode="q", comm=self.comm, info=info, root=self._peer(home, "home"))
        finally:
            info.Free()

    def mutex(self):
        """Collective: a mutex over this communicator's ranks (``mpi4py.util.sync.Mutex``, an MCS queue
        lock): ``acquire()``, ``release()``, ``free()``, or use it as a context manager."""
        from mpi4py.util import sync
        info = self._rma_info()
        try:
            return sync.Mutex(comm=self.comm, info=info)
        finally:
            info.Free()

    def abort(self, code: int = 1) -> None:
        """End every rank of the job now (MPI_Abort), after a moment for the launcher to forward what this
        rank just wrote (the reason for the abort) before it kills the job."""
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        time.sleep(ABORT_GRACE)
        self.comm.Abort(code)

    def __repr__(self) -> str:
        return f"Communicator(rank={self.rank}, size={self.size})"


_WORLD = None


class Window:
    """An MPI-3 window of ``count`` elements on rank ``home`` (none elsewhere), made by
    :meth:`Communicator.window`, for one passive-target epoch: every rank calls :meth:`lock_all`, then
    reads and accumulates one-sidedly (each operation complete when it returns), then :meth:`unlock_all`.
    Accumulates to one location are atomic per element (MPI-3.1 sec. 11.7.1): concurrent sums are never lost.
    """

    def __init__(self, comm: Communicator, count: int, dtype: np.dtype, home: int):
        from mpi4py.util.dtlib import from_numpy_dtype
        self.comm, self.MPI, self.count, self.dtype, self.home = comm, comm.MPI, count, dtype, home
        try:  # a predefined type where MPI has one (atomic fetch-and-op and compare-and-swap need it)
            self.type = comm.MPI.Datatype.fromcode(dtype.char)
        except (ValueError, KeyError):
            self.type = from_numpy_dtype(dtype)
        info = comm._rma_info()
        mine = comm.rank == home
        self.win = comm.MPI.Win.Allocate(count * dtype.itemsize if mine else 0, dtype.itemsize, info, comm.comm)
        info.Free()
        self._nothing, self._arg, self._out = np.zeros(1, dtype), np.zeros(1, dtype), np.zeros(1, dtype)

    def put(self, values: np.ndarray) -> None:
        """Before the epoch, on ``home`` only: store ``values`` (``count`` elements) in the window."""
        values = np.ascontiguousarray(values, self.dtype)
        if values.size != self.count:
            raise ValueError(f"values: expected {self.count} elements, got {values.size}")
        self.win.Lock(self.home, self.MPI.LOCK_EXCLUSIVE)
        self.win.Put([values, self.type], self.home)
        self.win.Unlock(self.home)

    def lock_all(self) -> None:
        self.win.Lock_all()

    def unlock_all(self) -> None:
        self.win.Unlock_all()

    def read(self, out: np.ndarray) -> np.ndarray:
        """The whole window into ``out``, element-wise atomically with concurrent accumulates."""
        self.win.Get_accumulate([self._nothing, 1, self.type], [out, self.type], self.home,
                                [0, self.count, self.type], op=self.MPI.NO_OP)
        self.win.Flush(self.home)
        return out

    def accumulate(self, values: np.ndarray, offset: int = 0) -> None:
        """Add ``values`` to the elements from ``offset`` on, atomically per element."""
        self.win.Accumulate([values, self.type], self.home, [offset, values.size, self.type], op=self.MPI.SUM)
        self.win.Flush(self.home)

    def fetch_add(self, slot: int, value=1):
        """Add ``value`` to element ``slot`` and return the value before (atomic: ``Fetch_and_op``)."""
        self._arg[0] = value
        self.win.Fetch_and_op([self._arg, self.type], [self._out, self.type], self.home, slot, op=self.MPI.SUM)
        self.win.Flush(self.home)
        return self._out[0].item()

    def fetch(self, slot: int):
        """Element ``slot`` (atomic with concurrent ``fetch_add`` and ``compare_and_swap``)."""
        self.win.Fetch_and_op([self._arg, self.type], [self._out, self.type], self.home, slot, op=self.MPI.NO_OP)
        self.win.Flush(self.home)
        return self._out[0].item()

    def compare_and_swap(self, slot: int, expected, new):
        """Set element ``slot`` to ``new`` if it equals ``expected``; returns the value before (atomic)."""
        self._arg[0] = new
        self.win.Compare_and_swap([self._arg, self.type], [np.array([expected], self.dtype), self.type],
                                  [self._out, self.type], self.home, slot)
        self.win.Flush(self.home)
        return self._out[0].item()

    def free(self) -> None:
        self.win.Free()


def world():
    """The world communicator: MPI's when mpi4py is importable, else the serial stand-in (cached)."""
    global _WORLD
    if _WORLD is None:
        try:
            _WORLD = Communicator()
        except ImportError:
            _WORLD = SerialCommunicator()
    return _WORLD


def launched_by_mpi() -> bool:
    """Whether an MPI launcher (mpiexec, srun) started this process as one of several ranks; reads the
    launcher's environment only, so mpi4py is not imported."""
    return any(os.environ.get(v, "").strip().isdigit() and int(os.environ[v]) > 1 for v in LAUNCHER_SIZES)


def _check_gather_out(out, buf, size: int) -> None:
    want = (size, *buf.shape)
    if type(out) is not np.ndarray or out.shape != want or out.dtype != buf.dtype or not out.flags.c_contiguous:
        raise ValueError(f"out: expected a C-contiguous numpy array of shape {want} and dtype {buf.dtype}, got "
                         f"{type(out).__name__} {getattr(out, 'shape', '')} {getattr(out, 'dtype', '')}".rstrip())


def launcher_rank() -> int | None:
    """This process's rank as the MPI launcher's environment tells it (None: not told); known before MPI is
    initialised, so it still names rank 0 when initialising fails."""
    for v in LAUNCHER_RANKS:
        value = os.environ.get(v, "").strip()
        if value.isdigit():
            return int(value)
    return None


def default_comm():
    """MPI's world when this process was started by an MPI launcher with several ranks (or mpi4py's MPI is
    already loaded), else None: applications then run serially without importing mpi4py."""
    return world() if launched_by_mpi() or "mpi4py.MPI" in sys.modules else None


def install_abort_hook(comm=None) -> None:
    """On an unhandled exception in any thread of any rank: print it with the rank, then abort all ranks."""
    comm = comm or world()
    if comm.size == 1:
        return

    def report_and_abort(exc_type, exc, tb, where="main thread"):
        msg = "".join(traceback.format_exception(exc_type, exc, tb))
        sys.stderr.write(f"[hpcai rank {comm.rank}/{comm.size}] unhandled exception in {where}; "
                         f"aborting all ranks\n{msg}")
        sys.stderr.flush()
        comm.abort(1)

    sys.excepthook = report_and_abort
    threading.excepthook = lambda args: report_and_abort(args.exc_type, args.exc_value, args.exc_traceback,
                                                         f"thread {args.thread.name if args.thread else '?'}")
