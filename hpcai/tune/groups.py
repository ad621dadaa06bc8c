"""The engines' side of a study: the MPI world split into groups of k ranks, each running one trial at a time.

Every engine runs :func:`serve` once for the whole study (one ``Engines.run``, so the engines' failure reports
and watchdog cover it). The world is split into ``size // k`` groups (ranks left over sit out); each group's
rank 0 connects to the process holding the study and asks it for a trial, the group runs it on a fresh
duplicate of its communicator, and rank 0 tells the outcome: the value, pruned, or every rank's traceback.

A trial that raises on every rank of its group fails alone; the group goes on with the next one. A rank that
raises while the others of its group are still inside the trial (they may wait for it in a collective) gives
them ``FAIL_GRACE`` seconds, then raises out of :func:`serve`: the engines' watchdog ends the MPI job, and the
Tuner fails that trial with the traceback, retries the others that were running and restarts the engines.
"""
from __future__ import annotations

import os
import socket
import time
import traceback

import numpy as np

from .trial import TrialContext, TrialPruned, request

FAIL_GRACE = 5.0  # seconds a failed rank waits for the other ranks of its group to finish the trial
DONE_TAG = 31     # tag of the "finished this trial" messages between the ranks of a group


def serve_on_engine(address, authkey, group_size, payload: bytes, sign, folders):
    """What ``Engines.run`` calls: :func:`serve` on MPI's world (imported here: engines receive functions by value).

    The objective comes as ``payload`` (pickled after ipyparallel's ``can``) and is unpickled here once
    ``folders`` are first on ``sys.path``, so a trial function may live in a module of the user's folder; one
    defined in the notebook is rebuilt in the engine's namespace (what ``%px`` imported there, it sees).
    """
    import pickle
    import sys

    from ipyparallel.serialize import uncan

    from hpcai.parallel import world
    from hpcai.tune.groups import serve
    sys.path[:0] = [f for f in folders if f not in sys.path]
    try:
        from IPython import get_ipython
        shell = get_ipython()
    except ImportError:
        shell = None
    objective = uncan(pickle.loads(payload), shell.user_ns if shell is not None else None)
    return serve(world(), address, authkey, group_size, objective, sign)


def serve(world, address, authkey, group_size: int, objective, sign: float) -> dict:
    """This rank's part of the study: split ``world`` into groups of ``group_size``, then ask, run, tell until
    the study says it is done. Returns {"group", "ranks", "trials"} (the trial numbers this group ran)."""
    from multiprocessing.connection import Client
    groups = world.size // group_size
    color = world.rank // group_size
    group = world.split(min(color, groups), world.rank)
    if color >= groups:  # left over: no group of full size
        group.free()
        return {"group": None, "ranks": [world.rank], "trials": []}
    control = group.dup()
    ranks = control.allgather_obj(world.rank)
    where = control.allgather_obj((socket.gethostname(), os.getpid()))
    conn = Client(tuple(address), authkey=authkey) if control.rank == 0 else None
    ran = []
    try:
        while True:
            job = request(conn, "ask", color, ranks, [w[0] for w in where], [w[1] for w in where]) \
                if conn is not None else None
            job = control.bcast_obj(job)
            if job is None:
                break
            number, params = job
            _run_trial(number, params, objective, sign, group, control, conn, ranks, world.rank)
            ran.append(number)
    finally:
        if conn is not None:
            conn.close()
        control.free()
        group.free()
    return {"group": color, "ranks": ranks, "trials": ran}


def _run_trial(number, params, objective, sign, group, control, conn, ranks, world_rank):
    comm = group.dup()  # the trial's own messages never meet the next trial's
    ctx = TrialContext(number, params, comm, control, conn, ranks, sign)
    start = time.perf_counter()
    try:
        status = ("complete", float(objective(params, ctx)))
    except TrialPruned as e:
        status = ("pruned", e.step)
    except Exception as exc:  # noqa: BLE001 - the trial's failure is reported, the group goes on
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        status = ("fail", f"rank {world_rank} raised:\n{text}")
    if not _all_finished(control, status[0] == "fail"):
        raise RuntimeError(f"trial {number} failed on rank {world_rank} while the other ranks of its group "
                           f"{ranks} went on for {FAIL_GRACE:g} s:\n{status[1]}")
    statuses = control.gather_obj(status)
    comm.free()
    if conn is not None:
        request(conn, "tell", number, statuses, time.perf_counter() - start)


def _all_finished(control, failed: bool) -> bool:
    """Every rank of the group has finished the trial (each tells the others); a rank whose trial raised waits
    FAIL_GRACE s at most, then returns False (the others are stuck in the trial, perhaps waiting for it)."""
    if control.size == 1:
        return True
    mark, got = np.ones(1, np.int8), np.zeros(1, np.int8)
    sends = [control.isend_(mark, r, DONE_TAG) for r in range(control.size) if r != control.rank]
    for r in range(control.size):
        if r == control.rank:
            continue
        if failed and control.probe(r, DONE_TAG, timeout=FAIL_GRACE) is None:
            return False
        control.recv_(got, r, DONE_TAG)
    for s in sends:
        control.wait(s)
    return True
