"""CPU kernels on every core: work split into parts run on threads, BLAS single-threaded meanwhile.

numpy's copies and elementwise passes run on one core, and between two GEMMs BLAS's threads sit idle
(or spin); a convolution alternates the two in every tile, and pooling and activations are nothing
but such passes. ``parallel`` instead runs whole parts (copies and GEMMs of a few samples) on as many
threads as BLAS would use, each GEMM single-threaded meanwhile: numpy's large operations and its BLAS
calls release the GIL, so every core works all the time. The number of threads follows BLAS's own
setting (found by threadpoolctl), so a limit set by the user or by Hogwild's workers holds here too.
"""
from __future__ import annotations

import functools
import os
import threading

import numpy as np

# Parts smaller than this many elements are not worth a thread of their own; a thread works through
# its part in blocks of about _BLOCK elements, so that a string of passes over a block finds it in cache.
_LEAST = 1 << 17
_BLOCK = 1 << 18


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
_state = {"depth": 0, "blas": 1}  # parallel sections running; BLAS threads to restore after the last


def parallel(fn, parts):
    """[fn(part) for part in parts], the parts on threads of their own (the first on the caller's)
    with BLAS single-threaded until all are done; the first exception in any part is raised here."""
    if len(parts) <= 1:
        return [fn(part) for part in parts]
    ctl = _controller()
    with _lock:
        if _state["depth"] == 0:
            _state["blas"] = ctl.num_threads
            ctl.set_num_threads(1)
        _state["depth"] += 1
    results, errors = [None] * len(parts), []

    def run(i):
        try:
            results[i] = fn(parts[i])
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    try:
        threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(1, len(parts))]
        for t in threads:
            t.start()
        run(0)
        for t in threads:
            t.join()
    finally:
        with _lock:
            _state["depth"] -= 1
            if _state["depth"] == 0:
                ctl.set_num_threads(_state["blas"])
    if errors:
        raise errors[0]
    return results


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
