"""What :mod:`hpcai.cluster` runs away from the client: small functions ipyparallel ships to the engines by
reference, and the guard that ends a cluster whose client died.

The engines import this module (hpcai is installed in their environment), so these stay importable
without the client side's dependencies. The guard runs this file as a script (``python -I
cluster_engine.py CLIENT_PID``), so it starts in a fraction of a second without importing hpcai or numpy.
"""
from __future__ import annotations

import os
import select
import shlex
import signal
import socket
import subprocess
import sys
import traceback

GUARD_POLL = 0.5  # seconds between the guard's checks that the client lives
GUARD_GRACE = 2.0  # seconds between SIGTERM and SIGKILL when the guard ends a cluster


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


# -- the guard: no cluster outlives its client -----------------------------------------------------------------
class Guard:
    """The client's side of the guard (:func:`guard`, run beside the cluster as its own process).

    It learns of the client's death from the end of its stdin pipe (only the client holds the write end:
    subprocesses never inherit it) and from the client's PID; it runs in a session of its own, so a Ctrl-C in
    the terminal reaches only the client, which stops the cluster itself.
    """

    def __init__(self, cluster_id: str, files=()):
        self.proc = subprocess.Popen([sys.executable, "-I", os.path.abspath(__file__), str(os.getpid())],
                                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True)
        self.known: set = set()
        self._say([f"cluster {cluster_id}"])
        self.remove(files)

    def add(self, pids) -> None:
        """Processes of the cluster (those it knows already are skipped)."""
        new = [pid for pid in pids if pid not in self.known]
        self.known.update(new)
        self._say([f"pid {pid}" for pid in new])

    def remove(self, paths) -> None:
        """Files of the cluster (connection files, a batch script) removed once it has been ended."""
        self._say([f"file {path}" for path in paths if path])

    def cancel_with(self, command) -> None:
        """A command that ends the cluster's batch job (``["scancel", "12"]``), run first if the client dies."""
        self._say([f"cancel {shlex.join(command)}"])

    def dismiss(self) -> None:
        """The client stopped the cluster: the guard exits without ending anything."""
        self._say(["done"])
        try:
            self.proc.stdin.close()
            self.proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()

    def _say(self, lines) -> None:
        if lines:
            try:  # a guard that died has nothing to hear
                self.proc.stdin.write("".join(line + "\n" for line in lines).encode())
                self.proc.stdin.flush()
            except (OSError, ValueError):
                pass


def guard(client_pid: int) -> int:
    """Watch the client (``client_pid``, whose pipe is this process's stdin) and end the cluster when it dies.

    The client writes lines: ``pid N`` (a process of the cluster), ``cancel COMMAND`` (what ends its batch
    job, run first), ``cluster ID`` (ipyparallel's cluster id,
    which every process of the cluster carries in its environment as IPP_CLUSTER_ID), ``file PATH`` (a
    connection file or batch script to remove) and ``done`` (the client stopped the cluster itself: exit). End of file
    without ``done`` -- the client died, however: SIGKILL, a kernel restart, an exception in a signal
    handler -- or the client's PID gone means the client is gone: SIGTERM to every process of the cluster,
    SIGKILL ``GUARD_GRACE`` s later to what is left, then its files are removed. A started
    process is remembered with its start time, so a reused PID is never mistaken for it.
    """
    import psutil
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the client, which stops the cluster itself
    try:
        client = psutil.Process(client_pid)
    except psutil.Error:
        client = None
    procs, files, cancels, cluster_id, buffered = {}, [], [], None, b""
    while client is not None and client.is_running():
        ready, _, _ = select.select([0], [], [], GUARD_POLL)
        if not ready:
            continue
        data = os.read(0, 65536)
        if not data:  # end of file: the client's end of the pipe closed, so the client is gone
            break
        *lines, buffered = (buffered + data).split(b"\n")
        for line in lines:
            what, _, value = line.decode(errors="replace").partition(" ")
            if what == "done":
                return 0
            if what == "pid":
                try:
                    procs.setdefault(int(value), psutil.Process(int(value)))
                except (ValueError, psutil.Error):
                    pass
            elif what == "cluster":
                cluster_id = value
            elif what == "file":
                files.append(value)
            elif what == "cancel":
                cancels.append(shlex.split(value))
    for command in cancels:  # the batch job first: its ranks may run on other nodes, out of reach of signals
        try:
            subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            pass
    _end_cluster(psutil, list(procs.values()), cluster_id)
    for path in files:
        try:
            os.remove(path)
        except OSError:
            pass
    return 0


def _end_cluster(psutil, procs: list, cluster_id) -> None:
    """SIGTERM, then SIGKILL after GUARD_GRACE s, to ``procs``, their descendants and every process carrying
    ``cluster_id`` in its environment (those spawned after the guard last heard from the client)."""
    def members():
        found = {p.pid: p for p in procs if p.is_running()}
        for p in list(found.values()):
            try:
                found.update((c.pid, c) for c in p.children(recursive=True))
            except psutil.Error:
                pass
        for p in psutil.process_iter() if cluster_id else ():
            try:
                if p.pid not in found and p.pid != os.getpid() and p.environ().get("IPP_CLUSTER_ID") == cluster_id:
                    found[p.pid] = p
            except psutil.Error:
                pass
        return list(found.values())

    for sig in (signal.SIGTERM, signal.SIGKILL):
        targets = members()
        for p in targets:
            try:
                p.send_signal(sig)
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(targets, timeout=GUARD_GRACE)
        if not alive and not members():
            return


if __name__ == "__main__":
    sys.exit(guard(int(sys.argv[1])))
