"""What :mod:`hpcai.cluster` runs on the engines: small functions ipyparallel ships by reference.

The engines import this module (hpcai is installed in their environment), so these stay importable
without the client side's dependencies.
"""
from __future__ import annotations

import os
import socket
import sys
import traceback


class RankFailure(Exception):
    """Raised on an engine in place of the function's exception; its message is the plain traceback."""


def call(fn, args, kwargs):
    """``fn(*args, **kwargs)``; an exception comes back as RankFailure carrying its traceback, without colours
    and without the engine's own frames, so the client can show it as the rank's error."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        raise RankFailure("".join(traceback.format_exception(type(exc), exc, exc.__traceback__.tb_next))) from None


def engine_info():
    """(rank, size, pid, host, MPI library) of this engine: how the client maps engine ids to MPI ranks."""
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    return comm.Get_rank(), comm.Get_size(), os.getpid(), socket.gethostname(), MPI.Get_library_version()


def abort_job(code: int = 1):
    """End every rank of the MPI job (MPI_Abort), from an idle engine, saying so in the engines' output."""
    from mpi4py import MPI
    sys.stderr.write(f"[hpcai] rank {MPI.COMM_WORLD.Get_rank()}: ending the MPI job (MPI_Abort)\n")
    sys.stderr.flush()
    MPI.COMM_WORLD.Abort(code)
