"""MPI engines for notebooks through ipyparallel: start, run a function on every rank, stop, never hang.

``Engines(n=4)`` starts an ipyparallel controller and ``n`` engines as one MPI job: local ``mpiexec`` by
default, Slurm or PBS through ipyparallel's own batch launchers. ``run(fn)`` calls ``fn`` on every engine
and returns the results ordered by MPI rank, never by engine id. A watchdog thread keeps the job honest:
when some rank raised and the others are still busy ``abort_after`` seconds later (typically waiting for
it in a collective), it ends the job with ``MPI_Abort`` from the failed rank, so ``run`` -- and a ``%%px``
cell on :attr:`Engines.view` -- reports the failing rank within seconds instead of hanging; a lost engine
ends the job the same way. ``run_resilient`` restarts the engines and resumes from the last checkpoint.
``stop()`` leaves no process behind: it checks every local process of the job by PID. And when this process
dies without stopping them (SIGKILL, a kernel restart), a guard beside the cluster ends every process of it
within seconds (:class:`hpcai.cluster_engine.Guard`).

Every coroutine method has a blocking ``*_sync`` twin (``await engines.start()`` in a notebook,
``engines.start_sync()`` in a script), as in ipyparallel.

Configuration lives in one place, :mod:`hpcai.cluster_config` (arguments, else ``HPCAI_*`` environment
variables); the ``mpiexec`` is the active environment's, and one from another MPI than mpi4py's (n separate
rank-0 jobs) is detected at start. What runs on the engines is in :mod:`hpcai.cluster_engine`.
"""
from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import functools
import logging
import os
import re
import shlex
import signal
import threading
import time
import weakref
from typing import NamedTuple

from . import checks, cluster_engine
from .cluster_batch import BatchJob
from .cluster_config import LAUNCHERS, cluster_config, find_mpiexec

__all__ = ["EngineError", "EngineInfo", "EngineStartError", "Engines", "LAUNCHERS", "cluster_config", "find_mpiexec"]
log = logging.getLogger(__name__)
POLL = 0.1  # seconds between checks of the job
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_IPP_LOG = re.compile(r"^\d{4}-\d\d-\d\d [\d:.]+ \[[^]]+\] (?!.*(ERROR|CRITICAL))")  # ipyparallel's own chatter


def _ipyparallel():
    try:
        import ipyparallel
        import psutil
    except ImportError:
        raise ImportError("hpcai.cluster needs ipyparallel: pip install 'hpcai[notebook,mpi]'") from None
    return ipyparallel, psutil


# what srun or MPI write when a rank of a batch job died while starting
_RANK_FAILED = re.compile(r"srun: error: .*(Exited with exit code|Killed)|Fatal error in (PMPI_|MPI_|internal_)Init")


class EngineError(RuntimeError):
    """A function failed on some MPI ranks, or the MPI job ended under it.

    ``failures`` maps rank -> the traceback it raised; ``lost`` lists the ranks that returned nothing;
    ``job_ended`` says why the job ended (None while the engines live); ``output`` is the engines' last output.
    """

    def __init__(self, message, failures=None, lost=(), job_ended=None, output=""):
        super().__init__(message)
        self.failures, self.lost, self.job_ended, self.output = dict(failures or {}), list(lost), job_ended, output


class EngineStartError(RuntimeError):
    """Engines did not start; the message holds the launch commands and the processes' own output."""


class _RankStartFailure(EngineStartError):
    """A rank of a batch job died while starting (in MPI_Init): start() tries once more before raising."""


class EngineInfo(NamedTuple):
    rank: int
    engine_id: int
    pid: int
    host: str


def _metadata(ar) -> list:
    """Per-engine metadata of an AsyncResult in target order; ``status`` is None until that engine replies."""
    md = ar.metadata
    return [md] if isinstance(md, dict) else list(md)


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _indent(text: str) -> str:
    return "    " + text.rstrip().replace("\n", "\n    ")


def _sync(coro_fn):
    """The blocking twin of a coroutine method (run in a worker thread when a loop already runs: notebooks)."""
    @functools.wraps(coro_fn)
    def twin(*args, **kwargs):
        def run():
            return asyncio.run(coro_fn(*args, **kwargs))
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return run()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(run).result()
    twin.__name__ = twin.__qualname__ = coro_fn.__name__ + "_sync"
    twin.__doc__ = f"Blocking twin of :meth:`{coro_fn.__name__}`."
    return twin


_LIVE = weakref.WeakSet()


@atexit.register
def _stop_all():
    for engines in list(_LIVE):
        with contextlib.suppress(Exception):
            engines.stop_sync()


class Engines:
    """n MPI engines under one ipyparallel controller; a context manager (``with``/``async with``).

    Args:
        n: the number of engines (MPI ranks).
        launcher, mpi_args, mpiexec, env, queue, account, walltime, batch_options: see :func:`cluster_config`.
        profile_dir, cluster_id: ipyparallel's (defaults: the IPython profile, a fresh id).
        timeout: seconds to wait for all engines to register (default 60; 600 for batch jobs, which queue).
        abort_after: seconds the other ranks may stay busy after one raised before the job is ended
            (None: never end it).
    """

    def __init__(self, n: int = 2, launcher=None, *, mpi_args=None, mpiexec=None, env=None, queue=None, account=None,
                 walltime=None, batch_options=(), profile_dir=None, cluster_id=None, timeout: float | None = None,
                 abort_after: float | None = 3.0):
        checks.integer("n", n, 1)
        self.config = cluster_config(n, launcher, mpi_args, mpiexec, env, queue, account, walltime, batch_options)
        self.n, self.abort_after = n, abort_after
        self.timeout = float(timeout if timeout is not None else 60 if self._local() else 600)
        self._where = {k: v for k, v in (("profile_dir", profile_dir), ("cluster_id", cluster_id)) if v}
        self.cluster = self.client = self._watch_client = self._watcher = self._activated = None
        self.ranks: list[EngineInfo] = []
        self.ended: str | None = None
        self._procs, self._tracked, self._lock, self._stop_watch = [], [], threading.Lock(), threading.Event()
        self._guard, self._died = None, []

    @property
    def running(self) -> bool:
        """Started, and the MPI job has not ended."""
        return self.client is not None and self.ended is None

    @property
    def pids(self) -> list[int]:
        """Every local process of this cluster: controller, mpiexec, MPI proxies, engines and their nannies."""
        return sorted(p.pid for p in self._procs)

    @property
    def view(self):
        """A blocking DirectView on all engines in rank order, for ``apply`` and ``%%px``.

        Its ``execute`` (what ``%%px`` calls) is watched like :meth:`run`: a cell that raises on some ranks
        while the others stay busy ends the job within ``abort_after`` seconds instead of hanging.
        """
        self._require_running()
        view = self.client[[info.engine_id for info in self.ranks]]
        view.block, execute = True, view.execute

        def watched_execute(code, silent=True, targets=None, block=None, **kwargs):
            ar = self._track(execute(code, silent=silent, targets=targets, block=False, **kwargs))
            if view.block if block is None else block:
                ar.get()  # raises the engines' errors, as ipyparallel's blocking execute does
            return ar
        view.execute = watched_execute
        return view

    def activate(self, suffix: str = ""):
        """Register ``%px``/``%%px`` magics on :attr:`view` (again after every restart); returns the view."""
        view = self.view
        view.activate(suffix)
        self._activated = suffix
        return view

    def _local(self) -> bool:
        return self.config["engines"] == "mpi"

    def _require_running(self):
        if self.client is None:
            raise RuntimeError("engines are not started: call engines.start() or use `with Engines(...)`")
        if self.ended is not None:
            raise EngineError(f"the MPI job has ended ({self.ended}); engines.restart() starts fresh engines",
                              job_ended=self.ended)

    # -- start / stop -----------------------------------------------------------------------------------
    async def start(self) -> "Engines":
        """Start the controller and the engines, and map engine ids to MPI ranks."""
        if self.client is not None:
            return self
        try:
            return await self._start()
        except _RankStartFailure as e:  # MPI_Init failing in a fresh batch job is often transient: once more
            log.warning("hpcai.cluster: %s; starting the engines once more", str(e).splitlines()[0])
            return await self._start()

    async def _start(self) -> "Engines":
        ipp, psutil = _ipyparallel()
        # ipyparallel's own INFO/WARNING log (every start and stop, engines' exit codes on shutdown) would fill
        # notebook cells; launch failures are reported by start() itself, with the processes' output
        self.ended, self.cluster = None, ipp.Cluster(**self.config, **self._where, delay=0, log_level=logging.ERROR)
        _LIVE.add(self)
        try:
            await self.cluster.start_controller()
            self._procs = [psutil.Process(self.cluster.controller.pid)]
            self._start_guard()
            await self.cluster.start_engines(self.n)
            if self._local():
                self._procs.append(psutil.Process(self.cluster.engine_set.pid))
                self._tell_guard()
            elif self._guard is not None and self._batch_job() is not None:
                self._guard.cancel_with(self._batch_job().cancel_command())
                self._guard.remove([getattr(self.cluster.engine_set, "batch_file", None)])  # its script
            self.client = await self.cluster.connect_client()
            await self._wait_for_engines()
            await self._map_ranks()
            self._watch_client = await self.cluster.connect_client()
        except BaseException as exc:
            output = self._launcher_output()
            await self.stop()
            if not isinstance(exc, Exception):  # cancelled or interrupted: cleaned up, passed on
                raise
            what = str(exc) if isinstance(exc, EngineStartError) else f"{type(exc).__name__}: {exc}"
            kind = _RankStartFailure if isinstance(exc, _RankStartFailure) else EngineStartError
            raise kind(f"{self.n} MPI engines did not start: {what}\n{output}") from None
        self._stop_watch.clear()
        self._watcher = threading.Thread(target=self._watch, name="hpcai-engines-watchdog", daemon=True)
        self._watcher.start()
        if self._activated is not None:
            self.activate(self._activated)
        return self

    async def _wait_for_engines(self):
        deadline, job, asked = time.monotonic() + self.timeout, self._batch_job(), 0.0
        while len(self.client.ids) < self.n:
            if self._local() and not self._alive(self._procs[1]):
                raise EngineStartError(f"mpiexec exited before {self.n - len(self.client.ids)} of them registered")
            if job is not None and time.monotonic() - asked > 1.0:  # the scheduler, once a second
                asked = time.monotonic()
                rank_failed = _RANK_FAILED.search(self._launcher_output())
                if not await asyncio.to_thread(job.active):
                    raise (_RankStartFailure if rank_failed else EngineStartError)(
                        f"{await asyncio.to_thread(job.describe)} before {self.n - len(self.client.ids)} of them "
                        "registered")
                if rank_failed:  # the job lives on, but a rank is gone
                    raise _RankStartFailure(f"a rank of the batch job failed to start (its output is below); "
                                            f"{self.n - len(self.client.ids)} engine(s) never registered")
            if time.monotonic() > deadline:
                where = f"; {await asyncio.to_thread(job.describe)}, so it was cancelled" if job else ""
                raise EngineStartError(f"{len(self.client.ids)} registered within timeout={self.timeout:g} s{where}")
            await asyncio.sleep(POLL)

    def _batch_job(self):
        """The batch job of batch engines (None for local ones, or before it was submitted)."""
        job_id = getattr(getattr(self.cluster, "engine_set", None), "job_id", "")
        return None if self._local() or not job_id else BatchJob(self.config["engines"], job_id)

    async def _map_ranks(self):
        ids = sorted(self.client.ids)
        ar = self.client[ids].apply_async(cluster_engine.engine_info)
        infos = await asyncio.wait_for(asyncio.wrap_future(ar), self.timeout)
        if sorted(i[0] for i in infos) != list(range(self.n)) or {i[1] for i in infos} != {self.n}:
            raise EngineStartError(
                f"they do not form one MPI job of {self.n} ranks: (rank, size) per engine {[i[:2] for i in infos]}. "
                f"The mpiexec used ({self.cluster.engine_set.args[0]}) is probably not from the MPI mpi4py uses "
                f"({infos[0][4].splitlines()[0]}); set HPCAI_MPIEXEC or mpiexec=")
        self.ranks = sorted(EngineInfo(r, eid, pid, host) for eid, (r, _, pid, host, _) in zip(ids, infos))
        self._remember_children()

    def _launcher_output(self) -> str:
        """The launch commands and the last lines the controller and engines wrote (their log files)."""
        parts = []
        for label, name in (("engines", "engine_set"), ("controller", "controller")):
            launcher = getattr(self.cluster, name, None)
            if launcher is not None:
                path = getattr(launcher, "output_file", "")
                try:
                    with open(path, errors="replace") as f:
                        text = _tail(f.read(), 30) or "(empty)"
                except OSError:
                    text = "(no output file)"
                parts.append(f"--- {label}: {shlex.join(launcher.args)}\n--- {label} output ({path}):\n{_indent(text)}")
        return "\n".join(parts)

    async def stop(self) -> None:
        """Stop engines and controller, then check by PID that every local process is gone (killing stragglers)."""
        busy = any(not ar.done() for ar, _ in self._tracked)  # stopped mid-run (Ctrl-C): engines to kill, no news
        self._stop_watch.set()
        if self._watcher is not None:
            await asyncio.to_thread(self._watcher.join, 30)
        for client in (self._watch_client, self.client):
            with contextlib.suppress(Exception):
                client.close()
        self._remember_children()  # including any spawned since start
        job = self._batch_job() if self.cluster is not None else None
        script = getattr(getattr(self.cluster, "engine_set", None), "batch_file", None) if not self._local() else None
        if self.cluster is not None:
            for step in (self.cluster.stop_engines, self.cluster.stop_controller):
                try:
                    await asyncio.wait_for(step(), 30)
                except Exception as e:  # an engine set that died may refuse to stop: the PID sweep follows
                    log.debug("stopping %s: %r", step.__name__, e)
        # a batch job, cancelled above: wait (up to 60 s) until the scheduler has ended it
        if job is not None and not await asyncio.to_thread(job.wait_ended, 60.0):
            log.warning("hpcai.cluster: %s 60 s after it was cancelled", job.describe())
        if script:
            with contextlib.suppress(OSError):
                os.remove(script)
        killed = await asyncio.to_thread(self._reap)
        if killed:
            (log.debug if busy else log.warning)("hpcai.cluster: killed %d process(es) left after stopping: pids %s",
                                                 len(killed), killed)
        self._stop_guard()
        self.cluster = self.client = self._watch_client = self._watcher = None
        self.ranks, self._procs, self._tracked, self._died = [], [], [], []
        _LIVE.discard(self)

    # -- the guard: a process beside the cluster that ends it when this one dies ------------------------------
    def _start_guard(self):
        """Start the guard (:class:`hpcai.cluster_engine.Guard`): whatever ends this process -- SIGKILL, a kernel
        restart or shutdown, an exit that skips ``stop()`` -- it ends the cluster's processes within seconds,
        so none keeps computing, or holding an allocation, after its client is gone."""
        self._stop_guard()
        cluster_id, security = self.cluster.cluster_id, os.path.join(self.cluster.profile_dir, "security")
        files = [getattr(self.cluster, "cluster_file", "")] + [
            os.path.join(security, f"ipcontroller-{cluster_id}-{kind}.json") for kind in ("client", "engine")]
        try:
            self._guard = cluster_engine.Guard(cluster_id, [f for f in files if f])
        except OSError as e:
            log.warning("hpcai.cluster: no guard for the cluster (%r): if this process dies, stop it by hand", e)
        self._tell_guard()

    def _tell_guard(self):
        if self._guard is not None:
            self._guard.add(p.pid for p in self._procs)

    def _stop_guard(self):
        """The cluster is stopped: the guard exits without ending anything."""
        guard, self._guard = self._guard, None
        if guard is not None:
            guard.dismiss()

    def _reap(self, grace: float = 2.0) -> list[int]:
        """Wait ``grace`` s for our processes to exit, then SIGKILL what is left of the cluster; returns those pids.

        "Left" includes orphans: processes a dying parent spawned after we last looked, found by the
        cluster id ipyparallel puts in their environment.
        """
        self._wait(lambda: not any(map(self._alive, self._procs)), grace)
        killed = []
        for _ in range(3):
            left = self._leftovers()
            for p in left:
                with contextlib.suppress(Exception):
                    p.kill()
                    killed.append(p.pid)
            if not left or self._wait(lambda: not any(map(self._alive, left)), 5.0) and not self._leftovers():
                break
        return killed

    def _leftovers(self) -> list:
        """Live processes of this cluster: those recorded, and any carrying its id in the environment."""
        _, psutil = _ipyparallel()
        cluster_id = getattr(self.cluster, "cluster_id", None)
        procs = {p.pid: p for p in self._procs}
        for p in psutil.process_iter() if cluster_id else ():
            with contextlib.suppress(psutil.Error):
                if p.pid not in procs and p.pid != os.getpid() and p.environ().get("IPP_CLUSTER_ID") == cluster_id:
                    procs[p.pid] = p
        self._procs = list(procs.values())
        return [p for p in self._procs if self._alive(p)]

    def _remember_children(self):
        """Add the descendants of our processes (schedulers, MPI proxies, engines, nannies) to the PID list."""
        for proc in list(self._procs):
            with contextlib.suppress(Exception):
                known = set(self.pids)
                self._procs += [c for c in proc.children(recursive=True) if c.pid not in known]
        self._tell_guard()

    @staticmethod
    def _alive(proc) -> bool:
        try:
            return proc.is_running() and proc.status() != "zombie"
        except Exception:  # NoSuchProcess, AccessDenied
            return False

    @staticmethod
    def _wait(done, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not done() and time.monotonic() < deadline:
            time.sleep(POLL)
        return done()

    async def restart(self) -> "Engines":
        """Stop everything and start ``n`` fresh engines (after the MPI job ended, or to reset state)."""
        await self.stop()
        return await self.start()

    async def __aenter__(self):
        return await self.start()

    async def __aexit__(self, *exc):
        await self.stop()

    def __enter__(self):
        return self.start_sync()

    def __exit__(self, *exc):
        self.stop_sync()

    def __repr__(self):
        state = "stopped" if self.client is None else "ended" if self.ended else "running"
        return f"Engines(n={self.n}, launcher={self.config['engines']!r}, {state})"

    # -- run --------------------------------------------------------------------------------------------
    async def run(self, fn, *args, timeout: float | None = None, stream: bool = True, on_data=None, label=None,
                  **kwargs) -> list:
        """``fn(*args, **kwargs)`` on every engine; the results as a list ordered by MPI rank.

        Raises EngineError naming the ranks that raised (with their tracebacks) or were lost; if the job
        ended, the engines are gone (``restart()``). ``timeout`` (seconds) ends the job when exceeded.
        ``stream`` prints the engines' output here as it arrives. ``on_data(datas)`` is called, while ``fn``
        runs, whenever what the engines published (``ipyparallel.datapub.publish_data``) changed: one dict
        per rank. ``label`` names the call in errors (default: ``run(fn's name)``), e.g. ``"run_app('digits')"``.
        """
        self._require_running()
        if on_data is not None and not callable(on_data):
            raise TypeError(f"on_data: expected a function on_data(datas) or None, got {on_data!r}")
        if timeout is not None:
            checks.number("timeout (seconds, or None)", timeout, 0.0, low_open=True)
        name = checks.text("label", label) if label is not None else f"run({getattr(fn, '__name__', repr(fn))})"
        view = self.client[[info.engine_id for info in self.ranks]]
        ar = self._track(view.apply_async(cluster_engine.call, fn, args, kwargs))
        start = time.monotonic()
        with ar.stream_output() if stream else contextlib.nullcontext():
            seen = None
            while not ar.done() and self.ended is None:
                if timeout is not None and time.monotonic() - start > timeout:
                    await asyncio.to_thread(self._end, f"{name} exceeded timeout={timeout:g} s")
                if on_data is not None:
                    datas = [dict(md["data"]) for md in _metadata(ar)]
                    if datas != seen and any(datas):
                        seen = datas
                        on_data(datas)
                await asyncio.sleep(POLL)
            if self.ended is None and ar.done() and any(  # engines died: the watchdog is about to say so
                    getattr(o, "ename", None) == "EngineError" for o in ar.get(0, return_exceptions=True)):
                await asyncio.to_thread(self._wait, lambda: self.ended is not None, 5.0)
            if self.ended is not None:  # the hub reports the dead ranks' tasks once it notices
                await asyncio.to_thread(self._wait, lambda: ar.done() and not self._job_alive(), 5.0)
        mds = _metadata(ar)
        outcomes = ar.get(0, return_exceptions=True) if ar.done() else [md["error"] for md in mds]
        failures, lost = {}, []
        for rank, (md, out) in enumerate(zip(mds, outcomes)):
            ename = getattr(out, "ename", None)
            if md["status"] is None or ename == "EngineError":  # no reply, or ipyparallel's "engine died"
                lost.append(rank)
            elif ename == "KeyboardInterrupt" and self.ended is not None:  # interrupted as the job was ended
                lost.append(rank)
            elif md["status"] == "error":
                failures[rank] = out.evalue if ename == "RankFailure" else _ANSI.sub("", str(
                    getattr(out, "traceback", None) or f"{ename}: {getattr(out, 'evalue', '')}"))
        if not failures and not lost and self.ended is None:
            return list(outcomes)
        died = [r for r in self._died if r in lost]
        lines = [f"{name} failed: the engine of rank(s) {died} died" if died else
                 f"{name} failed on {len(failures) + len(lost)} of {self.n} MPI ranks"]
        lines += [f"--- rank {r} raised:\n{_indent(tb)}" for r, tb in sorted(failures.items())]
        lines += [f"--- no result from rank(s) {lost}"] if lost else []
        if self.ended is None:
            raise EngineError("\n".join(lines), failures, lost)
        output = self._output_tail()
        lines.append(f"--- the MPI job ended: {self.ended}")
        lines += [f"--- the engines' last output:\n{_indent(output)}"] if output else []
        lines.append("The engines are gone: engines.restart() starts fresh ones; engines.run_resilient() "
                     "restarts them and resumes from a checkpoint.")
        raise EngineError("\n".join(lines), failures, lost, self.ended, output)

    async def interrupt(self) -> None:
        """Send SIGINT to every engine: the function running there raises KeyboardInterrupt between two Python
        statements. A rank blocked inside an MPI call does not notice; the watchdog then ends the job
        ``abort_after`` seconds after the others were interrupted (``restart()`` starts fresh engines).

        Through ipyparallel's ``Client.send_signal``: each engine's nanny signals its own engine process, on
        this machine or on a compute node alike. The launcher is not signalled: mpiexec ends the whole job on
        SIGINT, and a batch launcher's ``scancel -s``/``qsig -s`` reaches the job's script and launchers, not
        only the engines.
        """
        self._require_running()
        ids = [info.engine_id for info in self.ranks if info.engine_id in self.client.ids]
        if not ids:
            return
        try:  # a lost engine never answers: the watchdog reports it, so wait for the others only so long
            replies = await asyncio.wait_for(
                asyncio.wrap_future(self.client.send_signal(signal.SIGINT, targets=ids, block=False)), 10)
        except Exception as e:  # noqa: BLE001 (engines gone meanwhile)
            log.warning("hpcai.cluster: interrupting engines %s: %r", ids, e)
            return
        for engine_id, reply in zip(ids, replies):
            if reply["content"]["status"] != "ok":
                log.warning("hpcai.cluster: engine %s refused SIGINT: %s", engine_id, reply["content"].get("evalue"))

    def _output_tail(self) -> str:
        """The last lines of the engines' output, without colours and without ipyparallel's own log lines (nor
        the MPI set-up code that one of them echoes, up to a blank line)."""
        try:
            with open(self.cluster.engine_set.output_file, errors="replace") as f:
                text = f.read()
        except (OSError, AttributeError):
            return ""
        lines, echo = [], False
        for line in text.splitlines():
            if echo:
                echo = bool(line.strip())
            elif _IPP_LOG.match(line):
                echo = line.rstrip().endswith("Running code in user namespace:")
            else:
                lines.append(_ANSI.sub("", line))
        return _tail("\n".join(lines), 15)

    async def run_resilient(self, fn, *args, checkpoint, retries: int = 1, **kwargs) -> list:
        """:meth:`run` that survives lost engines: ``fn(*args, checkpoint=..., resume_from=..., **kwargs)``.

        ``fn`` writes its checkpoints to ``checkpoint`` (e.g. with ModelCheckpoint; the path must be visible
        here too) and continues from ``resume_from`` (None on a fresh start). When the job ends because
        engines were lost, the engines are restarted and fn resumes from the last checkpoint, up to
        ``retries`` times; exceptions raised by fn are not retried.
        """
        checkpoint = os.fspath(checkpoint)
        for attempt in range(retries + 1):
            if not self.running:
                await self.restart()
            resume = checkpoint if os.path.exists(checkpoint) else None
            try:
                return await self.run(fn, *args, checkpoint=checkpoint, resume_from=resume, **kwargs)
            except EngineError as e:
                if e.failures or e.job_ended is None or attempt == retries:
                    raise
                log.warning("hpcai.cluster: %s\nRestarting %d engines and resuming from %s (retry %d of %d)",
                            e, self.n, checkpoint, attempt + 1, retries)

    start_sync, stop_sync, restart_sync = _sync(start), _sync(stop), _sync(restart)
    run_sync, run_resilient_sync, interrupt_sync = _sync(run), _sync(run_resilient), _sync(interrupt)

    # -- the watchdog -----------------------------------------------------------------------------------
    def _track(self, ar):
        with self._lock:
            self._tracked.append([ar, None])  # [AsyncResult, when a rank's error was first seen]
        return ar

    def _watch(self):
        """Every POLL s: end the job when an engine is lost, or when a rank raised and others stay busy."""
        job, asked = self._batch_job(), time.monotonic()
        while not self._stop_watch.wait(POLL) and self.ended is None:
            if job is not None and time.monotonic() - asked > 2.0:  # the scheduler knows first: ask it every 2 s
                asked = time.monotonic()
                if not job.active():
                    self._end(f"the batch job of the engines ended: {job.describe()}")
                    continue
            died = self._lost_ranks()
            if died:
                self._wait(lambda: not self._job_alive(), 1.0)  # let a dying job die, then say who died first
                self._died = died
                self._end(self._deaths(died) + (f" ({job.describe()})" if job is not None else ""))
                continue
            now = time.monotonic()
            with self._lock:
                self._tracked = [t for t in self._tracked if not t[0].done()]
                tracked = list(self._tracked)
            for entry in tracked:
                failed = [md["engine_id"] for md in _metadata(entry[0]) if md["status"] == "error"]
                entry[1] = entry[1] or (now if failed else None)
                if failed and self.abort_after is not None and now - entry[1] >= self.abort_after:
                    rank = {i.engine_id: i.rank for i in self.ranks}.get(failed[0], "?")
                    self._end(f"rank {rank} raised and other ranks were still busy {self.abort_after:g} s later "
                              "(probably waiting for it in a collective), so hpcai ended the job",
                              abort_engine=failed[0])
                    break

    def _deaths(self, died) -> str:
        """Why the job ended: the rank(s) whose engine died first (as the watchdog saw them), with PID and host;
        the launcher then ends the other ranks, which are named apart."""
        where = ", ".join(f"rank {i.rank}: pid {i.pid} on {i.host}" for i in self.ranks if i.rank in died)
        others = [r for r in self._lost_ranks() if r not in died]
        return (f"the engine of rank(s) {died} died ({where}: killed, or crashed)"
                + (f"; the other rank(s) {others} were ended with the MPI job" if others else ""))

    def _lost_ranks(self) -> list[int]:
        """Ranks whose engine unregistered from the hub, or whose process (when it runs here) is gone."""
        gone = {i.rank for i in self.ranks if i.engine_id not in self.client.ids}
        if self._local():
            gone |= {i.rank for i, p in zip(self.ranks, self._engine_procs()) if p and not self._alive(p)}
        return sorted(gone)

    def _engine_procs(self):
        by_pid = {p.pid: p for p in self._procs}
        return [by_pid.get(i.pid) for i in self.ranks]

    def _job_alive(self) -> bool:
        if self._local():
            return any(self._alive(p) for p in [self._procs[1], *self._engine_procs()] if p)
        return any(i.engine_id in self.client.ids for i in self.ranks)

    def _end(self, reason: str, abort_engine=None) -> None:
        """End the MPI job -- MPI_Abort from an idle failed rank, then kill what is left -- and record why."""
        with self._lock:
            if self.ended is not None:
                return
            self.ended = reason
        log.warning("hpcai.cluster: %s; engines.restart() starts fresh engines", reason)
        if abort_engine is not None:
            with contextlib.suppress(Exception):
                self._watch_client[abort_engine].apply_async(cluster_engine.abort_job)
            self._wait(lambda: not self._job_alive(), 5.0)
        if self._local() and self._job_alive():  # kill the engines: their nannies tell the hub (and %%px) at once
            for p in filter(None, self._engine_procs()):
                with contextlib.suppress(Exception):
                    p.kill()
            self._wait(lambda: not self._job_alive(), 3.0)
        if self._job_alive():  # a batch job, or an mpiexec that outlived its ranks
            with contextlib.suppress(Exception):
                self.cluster.engine_set.signal(signal.SIGKILL)
