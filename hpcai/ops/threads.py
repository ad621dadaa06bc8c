"""CPU kernels on every core: work split into parts run on our threads, BLAS single-threaded meanwhile.

numpy's copies and elementwise passes run on one core, and between two GEMMs BLAS's threads sit idle
(or spin); a convolution alternates the two in every tile, and pooling and activations are nothing
but such passes. ``parallel`` instead runs whole parts (copies and GEMMs of a few samples) on as many
threads as BLAS would use, each GEMM single-threaded meanwhile: numpy's large operations and its BLAS
calls release the GIL, so every core works all the time. The number of threads follows BLAS's own
setting (found by threadpoolctl), so a limit set by the user or by Hogwild's workers holds here too.

hpcai's products go through :func:`matmul`, which leaves BLAS's own threads asleep unless a product
is large enough to need them: once woken, OpenBLAS's idle threads spin for a while (its thread timeout)
after every product, and on two cores that spinning halved the speed of the passes that ran on our
threads meanwhile (a small CNN's step: 121 ms with them, 73 ms without). Handing work to a thread
costs 5-100 us here (see :class:`_Team`), and each numpy call in a part may wait for the GIL, so parts are
whole tiles or large slices, never single small operations.
"""
from __future__ import annotations

import functools
import os
import threading

import numpy as np

from .. import accel

# Parts smaller than this many elements are not worth a thread of their own; a thread works through
# its part in blocks of about _BLOCK elements, so that a string of passes over a block finds it in cache.
_LEAST = 1 << 17
_BLOCK = 1 << 18
# Products of fewer multiply-adds than _SERIAL run as they are (OpenBLAS itself keeps those on one
# thread), and so do those of _THREADED or more, on BLAS's threads; those between run single-threaded.
_SERIAL, _THREADED = 1 << 18, 1 << 25
_BLAS_TYPES = tuple(np.dtype(t) for t in (np.float32, np.float64, np.complex64, np.complex128))


@functools.lru_cache(maxsize=None)
def _controller():
    """threadpoolctl's controller of the BLAS numpy loaded, or None: a library inside numpy's own
    install (wheels bundle it), else the only BLAS loaded in the process."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    libs = [lib for lib in ThreadpoolController().lib_controllers if lib.internal_api in ("openblas", "mkl", "blis")]
    home = os.path.dirname(os.path.dirname(os.path.realpath(np.__file__)))
    own = [lib for lib in libs if os.path.realpath(lib.filepath).startswith(os.path.join(home, "numpy"))]
    chosen = own or (libs if len(libs) == 1 else [])
    return chosen[0] if chosen else None


def workers():
    """Threads a CPU kernel may use: as many as BLAS would; 1 when numpy's BLAS is unknown."""
    ctl = _controller()
    return max(1, ctl.num_threads) if ctl is not None else 1


_lock = threading.Lock()
_state = {"depth": 0, "blas": 1, "team": None, "pid": None}  # sections running; BLAS threads to restore
# Iterations a waiting thread spins (about 0.3-1 ms here) before it sleeps on a lock.
_SPIN = 1 << 20


@accel.jit
def _spin(counts, k, seen, limit, scratch, marks, mark):
    """Store marks[k] = mark, then wait, GIL released, until counts[k] != seen or ``limit`` iterations have
    passed; whether it changed. The store into ``scratch`` (an array the compiler cannot tell apart from
    ``counts``) makes every iteration read counts[k] from memory again."""
    marks[k] = mark
    for n in range(limit):
        if counts[k] != seen:
            return True
        scratch[k] = n
    return counts[k] != seen


class _Team:
    """The threads that run the parts of one parallel section at a time (the first part stays on the caller).

    A thread that has finished its part, and the caller waiting for the others, spin for a while with the GIL
    released before they sleep (where numba is installed, ``_spin``), as OpenMP's threads do: a training step
    runs a section every few hundred microseconds, and waking a sleeping thread took 25-80 us here (a section
    handed over through a ThreadPoolExecutor cost about 100 us in all, 2-5 us spinning). Where numba is not
    installed (or is switched off, ``hpcai.accel``, where the team is made) they sleep on a lock at once. The
    CBED application's training step on 2 threads: 54 ms against 59 ms with a ThreadPoolExecutor (medians of 10
    alternating blocks in one process).

    A thread that wants the GIL while another holds it sleeps until it is let go, and waking it took 20-30 us
    here; so a thread marks its part finished only once it has released the GIL (inside ``_spin``), and the
    caller that sees the mark takes the GIL without sleeping: a section of two empty parts 39 -> 26-33 us, the
    CBED training step on 2 threads 39.6 -> 37.6 ms (medians of alternating blocks in one process)."""

    def __init__(self, size):
        self.size, self.busy = size, threading.Lock()          # a second caller meanwhile runs its parts itself
        self.spin = _spin.available
        self.posted, self.finished = np.zeros(size, np.int64), np.zeros(size, np.int64)
        self.scratch = [np.zeros(size, np.int64) for _ in range(2)]           # the spinners' stores
        self.go, self.done = [threading.Lock() for _ in range(size)], [threading.Lock() for _ in range(size)]
        self.tasks, self.results = [None] * size, [None] * size
        for lock in self.go + self.done:
            lock.acquire()
        for k in range(size):
            threading.Thread(target=self._serve, args=(k,), name=f"hpcai_{k}", daemon=True).start()

    def _wait(self, counts, k, seen, scratch, marks=None, mark=0):
        """Spin until counts[k] != seen (if the team spins), having stored marks[k] = mark (stored anyway)."""
        if self.spin:
            try:
                _spin(counts, k, seen, _SPIN, scratch, scratch if marks is None else marks, mark)
                return
            except Exception:  # noqa: BLE001 - the kernel cannot be compiled here: sleep on the locks instead
                self.spin = False
        if marks is not None:
            marks[k] = mark

    def _serve(self, k):
        count = 0
        self._wait(self.posted, k, count, self.scratch[0])
        while True:
            self.go[k].acquire()
            fn, parts = self.tasks[k]
            try:
                self.results[k] = (None, [fn(part) for part in parts])
            except BaseException as e:  # raised in the caller's thread
                self.results[k] = (e, None)
            self.tasks[k], count = None, count + 1
            self.done[k].release()
            # "finished" is stored by the spinning kernel, once the GIL is released: the caller that sees it
            # takes the GIL at once instead of sleeping until this thread lets go of it
            self._wait(self.posted, k, count, self.scratch[0], self.finished, count)

    def run(self, fn, parts):
        """[fn(part) for part in parts]: parts[0] on the caller's thread, the others dealt out to the team."""
        rest = parts[1:]
        used = min(self.size, len(rest))
        for k in range(used):
            self.tasks[k] = (fn, rest[k::used])
            self.go[k].release()
            self.posted[k] += 1
        error, first = None, None
        try:
            first = fn(parts[0])
        except BaseException as e:
            error = e
        try:
            for k in range(used):
                self._wait(self.finished, k, self.posted[k] - 1, self.scratch[1])
                self.done[k].acquire()
        except BaseException:  # interrupted while waiting: the locks' counts no longer match, start a new team
            _state["team"] = None
            raise
        results = [first] + [None] * len(rest)
        for k in range(used):
            e, values = self.results[k]
            self.results[k] = None
            error = error or e
            if values is not None:
                results[1 + k::used] = values
        if error is not None:
            raise error
        return results


def _team():
    """The worker threads, one fewer than the cores or BLAS's threads, whichever is more (made afresh in a
    forked child, which inherits none of them)."""
    with _lock:
        if _state["pid"] != os.getpid() or _state["team"] is None:
            size = max(1, max(_state["blas"], os.cpu_count() or 1) - 1)
            _state["team"], _state["pid"] = _Team(size), os.getpid()
        return _state["team"]


def parallel(fn, parts):
    """[fn(part) for part in parts], the parts on threads (the first on the caller's) with BLAS
    single-threaded until all are done; the first exception in any part is raised here. A section
    started inside another (or beside it, from another thread) runs its parts on its own thread."""
    ctl = _controller()
    if ctl is None or (len(parts) <= 1 and ctl.num_threads <= 1):
        return [fn(part) for part in parts]
    with _lock:
        if _state["depth"] == 0:
            _state["blas"] = ctl.num_threads
            ctl.set_num_threads(1)
        _state["depth"] += 1
    try:
        team = _team() if len(parts) > 1 else None        # no threads started for a lone part
        if team is None or not team.busy.acquire(blocking=False):
            return [fn(part) for part in parts]
        try:
            return team.run(fn, parts)
        finally:
            team.busy.release()
    finally:
        with _lock:
            _state["depth"] -= 1
            if _state["depth"] == 0:
                ctl.set_num_threads(_state["blas"])


def matmul(a, b, out=None):
    """``np.matmul(a, b)``, keeping BLAS's own threads asleep for products too small to need them.

    Products of at least ``_THREADED`` multiply-adds (about a millisecond) get BLAS's threads as usual;
    smaller ones, which OpenBLAS would still thread from ``_SERIAL`` on, run single-threaded, so that a
    model of small products and threaded passes (a small CNN) never has BLAS's idle threads spinning
    against ours."""
    if (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.ndim >= 2 and b.ndim >= 2 and
            a.dtype == b.dtype and a.dtype in _BLAS_TYPES):
        (m, k), n = a.shape[-2:], b.shape[-1]
        work = int(np.prod(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]), dtype=np.int64)) * m * n * k
        if _SERIAL <= work < _THREADED:
            return parallel(lambda _: np.matmul(a, b, out=out), [None])[0]
    return np.matmul(a, b, out=out)


def batch_parts(n, size):
    """Slices of a batch of ``n`` samples, one per thread, for work over ``size`` elements in all (one
    slice when it is too small to share)."""
    parts = max(1, min(workers(), n, size // _LEAST))
    return [slice(n * p // parts, n * (p + 1) // parts) for p in range(parts)]


def over_batch(xp, fn, n, size):
    """fn(batch slice) over a batch of ``n`` samples (``size`` elements of work): on the CPU each thread
    takes its share in blocks of samples small enough to stay in cache between fn's passes; on a GPU,
    whose kernels are parallel already, one call."""
    if xp is not np:
        return fn(slice(0, n))
    step = max(1, n * _BLOCK // max(size, 1))

    def blocks(part):
        for start in range(part.start, part.stop, step):
            fn(slice(start, min(start + step, part.stop)))

    parallel(blocks, batch_parts(n, size))


def batch_blocks(fn, n, size):
    """The sum of fn(batch slice) over a numpy batch of ``n`` samples (``size`` elements of work), cut
    as ``over_batch`` cuts it: per-thread shares in blocks that stay in cache; for per-channel
    reductions whose partial results are small arrays."""
    step = max(1, n * _BLOCK // max(size, 1))

    def blocks(part):
        return sum(fn(slice(start, min(start + step, part.stop))) for start in range(part.start, part.stop, step))

    return sum(parallel(blocks, batch_parts(n, size)))
