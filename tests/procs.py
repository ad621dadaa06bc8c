"""Processes a test started, found and ended: by PID, by an environment marker, or as descendants of this one.

Tests that start servers, kernels or MPI engines check with these that nothing is left behind, and kill what
is, so a failing test never leaves the machine busy. psutil.Process objects remember their creation time,
so a PID reused later by an unrelated process is never mistaken for one of ours. Needs psutil.
"""
from __future__ import annotations

import os
import time

import psutil


def alive(proc) -> bool:
    """Whether ``proc`` (a psutil.Process or a PID) still runs; a zombie counts as gone."""
    try:
        proc = proc if isinstance(proc, psutil.Process) else psutil.Process(proc)
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def living(procs) -> list:
    """Those of ``procs`` (psutil.Process objects or PIDs) that still run."""
    return [p for p in procs if alive(p)]


def descendants(pid: int | None = None) -> dict:
    """{pid: Process} of the live descendants of ``pid`` (default: this process)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return {}
    return {p.pid: p for p in children if alive(p)}


def with_env(name: str, value: str) -> list:
    """Live processes (other than this one) whose environment has ``name`` set to ``value``.

    A marker set in a test's environment is inherited by everything started from it, even by a process that
    outlives its parent; other people's processes on the same machine never carry it.
    """
    found = []
    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and p.environ().get(name) == value and alive(p):
                found.append(p)
        except psutil.Error:  # gone, or another user's process
            pass
    return found


def describe(proc) -> str:
    """``pid N: its command line`` (a psutil.Process or a PID)."""
    pid = getattr(proc, "pid", proc)
    try:
        proc = proc if isinstance(proc, psutil.Process) else psutil.Process(proc)
        return f"pid {pid}: {' '.join(proc.cmdline())[:200] or proc.name()}"
    except psutil.Error:
        return f"pid {pid}"


def kill(procs) -> None:
    """SIGKILL each of ``procs`` (psutil.Process objects or PIDs; gone already is fine), and reap them."""
    killed = []
    for p in procs:
        try:
            p = p if isinstance(p, psutil.Process) else psutil.Process(p)
            p.kill()
            killed.append(p)
        except psutil.Error:
            pass
    psutil.wait_procs(killed, timeout=5)


def collect(find, grace: float = 15.0) -> list[str]:
    """Wait up to ``grace`` s for ``find()`` (a list of processes) to come back empty -- exit hooks may still be
    stopping engines -- then describe and kill what is left; the descriptions (empty: nothing was left)."""
    deadline = time.monotonic() + grace
    left = living(find())
    while left and time.monotonic() < deadline:
        time.sleep(0.25)
        left = living(find())
    described = [describe(p) for p in left]
    kill(left)
    return described


def slurm_queue() -> set:
    """The job ids Slurm's queue holds now (every state), as strings."""
    import subprocess
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=20).stdout
    return set(out.split())


def engine_cluster(tmp_path_factory, n: int, label: str):
    """A module fixture's body (``yield from``): ``n`` engines with a profile of their own; afterwards no
    process of theirs -- restarted ones included -- may be left (what is, is killed and the test fails)."""
    from hpcai.cluster import Engines
    profile = tmp_path_factory.mktemp(label)
    cluster = Engines(n, profile_dir=str(profile), timeout=120)
    seen = []
    try:
        cluster.start_sync()
        seen += living(cluster.pids)
        yield cluster
        seen += living(cluster.pids)  # a test may have restarted them
    finally:
        cluster.stop_sync()
        left = collect(lambda: living(seen) + with_env("IPP_PROFILE_DIR", str(profile)), grace=5)
    assert not left, f"processes left after stop() (killed now): {left}"
