"""Optional compiled loops: numba, where installed, for the few kernels numpy cannot run at memory speed.

hpcai runs without it. Every kernel made with :func:`jit` sits beside a numpy path that gives the same
result, and the caller picks one with ``kernel.available``; the tests run both (:func:`disabled` turns
the compiled path off, as does ``HPCAI_NUMBA=0`` in the environment). numba is imported, and a kernel
compiled, only when a kernel is first called, so ``import hpcai`` stays light. Install it with
``pip install 'hpcai[fast]'``.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import threading

__all__ = ["Kernel", "jit", "disabled", "numba_installed"]

_local = threading.local()


@functools.lru_cache(maxsize=1)
def numba_installed() -> bool:
    """Whether numba can be imported (checked once, without importing it)."""
    return importlib.util.find_spec("numba") is not None


def _switched_off() -> bool:
    return os.environ.get("HPCAI_NUMBA", "1").strip().lower() in ("0", "false", "no", "off") or getattr(
        _local, "off", 0) > 0


@contextlib.contextmanager
def disabled():
    """Within this block (in this thread) every :class:`Kernel` reports itself unavailable."""
    _local.off = getattr(_local, "off", 0) + 1
    try:
        yield
    finally:
        _local.off -= 1


class Kernel:
    """A Python loop compiled by numba on first call; ``available`` says whether that path may be used."""

    def __init__(self, func, options: dict):
        self.func = func
        self.options = options
        self._compiled = None
        self._lock = threading.Lock()
        functools.update_wrapper(self, func)

    @property
    def available(self) -> bool:
        return numba_installed() and not _switched_off()

    def __call__(self, *args):
        if self._compiled is None:
            with self._lock:
                if self._compiled is None:
                    import numba

                    self._compiled = numba.njit(**self.options)(self.func)
        return self._compiled(*args)


def jit(func=None, **options):
    """Wrap ``func`` as a :class:`Kernel`; numba options default to ``cache=True, nogil=True``.

    Use as ``@jit`` or ``@jit(fastmath=False)``. The kernel must only be called where
    ``kernel.available`` is true; the numpy path beside it is the reference the tests compare with.
    """
    options = {"cache": True, "nogil": True, **options}
    if func is None:
        return lambda f: Kernel(f, options)
    return Kernel(func, options)
