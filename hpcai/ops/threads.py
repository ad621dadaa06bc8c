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
costs about 0.1-0.4 ms here, so parts are whole tiles or large slices, never single small operations.
"""
from __future__ import annotations

import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

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
_state = {"depth": 0, "blas": 1, "pool": None, "pid": None}  # sections running; BLAS threads to restore


def _pool():
    """The worker threads, one fewer than the cores or BLAS's threads, whichever is more (made afresh
    in a forked child, which inherits none of them)."""
    with _lock:
        if _state["pid"] != os.getpid():
            size = max(1, max(_state["blas"], os.cpu_count() or 1) - 1)
            _state["pool"], _state["pid"] = ThreadPoolExecutor(size, thread_name_prefix="hpcai"), os.getpid()
        return _state["pool"]


def parallel(fn, parts):
    """[fn(part) for part in parts], the parts on threads (the first on the caller's) with BLAS
    single-threaded until all are done; the first exception in any part is raised here."""
    ctl = _controller()
    if ctl is None or (len(parts) <= 1 and ctl.num_threads <= 1):
        return [fn(part) for part in parts]
    with _lock:
        if _state["depth"] == 0:
            _state["blas"] = ctl.num_threads
            ctl.set_num_threads(1)
        _state["depth"] += 1
    futures = []
    try:
        futures = [_pool().submit(fn, part) for part in parts[1:]]
        first = [fn(parts[0])] if parts else []
        return first + [f.result() for f in futures]
    finally:
        for f in futures:  # never leave a part running behind an exception
            f.exception()
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
