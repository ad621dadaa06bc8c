"""Run an application or a workflow where the user asked: in this process, as this MPI job's part, or on engines.

One pair of functions for the CLI, the control panel and notebooks::

    result = run_app("digits", {"precision": "mixed-bf16"}, engines=2, progress=print)
    result = run_workflow("control.toml", engines=3, path=["."])

Both take the same ``engines``: 0 runs here (one rank), N starts N local MPI engines for the call and stops
them after, an :class:`hpcai.cluster.Engines` runs there (Slurm or PBS engines included); under ``mpiexec``
each process runs its rank's part instead. On engines both go the same way (:func:`_on_engines`): the
function runs on every engine on MPI's world, rank 0's result comes back, ``stop`` interrupts the engines.

An application's progress comes back the same way from everywhere: ``progress(snapshots)`` with one snapshot
dict per rank (:meth:`hpcai.apps.progress.Progress.snapshot`); on engines they travel through ipyparallel's
``publish_data`` (workflow modules report none yet). Setting the ``stop`` event stops the run: in this
process an application raises :class:`~hpcai.apps.progress.Stopped` at its next step; on engines they are
interrupted (SIGINT).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import sys
import threading
import time
import warnings

import numpy as np

from . import checks
from .apps import APPS, Result, make_config
from .apps.progress import Progress, Stopped, publish_to_client
from .parallel.comm import SerialCommunicator, launched_by_mpi, launcher_rank

# the line a failing module leaves in the engines' output (and the last line of a one-rank ModuleFailed)
_MODULE_FAILED = re.compile(r"^(?:[\w.]*\.)?ModuleFailed: (module '.+)$", re.MULTILINE)
_FINISH_GRACE = 0.5  # s a Stop waits for the ranks' last reports: a run they all finished is not interrupted


def run_app(name: str, config=None, *, engines=0, verbose: int = 1, progress=None, stop: threading.Event | None = None,
            history=None, **overrides):
    """Run application ``name``; returns its Result (the same on every rank; rank 0's from engines).

    Args:
        config: its Config, a dict of Config fields, or None for the defaults; ``overrides`` by keyword.
        engines: 0 -- in this process; N -- on N local MPI engines started for this call and stopped after;
            an :class:`hpcai.cluster.Engines` -- there (started, or restarted after its job ended, as needed).
            Under ``mpiexec`` (more than one rank) every process runs its rank's part instead.
        progress: ``progress(snapshots)``, a list with one snapshot per rank, as the run goes.
        stop: an Event; once set the run stops (raising Stopped here).
        history: the folder whose ``history.jsonl`` records the run (:mod:`hpcai.history`); None -- the
            Config's ``output_dir``, if it has one set; False -- not recorded. Rank 0 records every run,
            finished, failed or stopped (a Config that does not validate is no run and is not recorded).
    """
    config = make_config(name, config, **overrides)
    app = APPS[name]
    _check_options(engines, progress, stop)
    folder = _history_folder(history, config)
    here = Progress([lambda snap: progress([snap])] if progress is not None else (), stop=stop)
    start, t0, ranks, result = time.time(), time.perf_counter(), 1, None
    try:
        if launched_by_mpi():
            from .parallel import install_abort_hook, world
            if launcher_rank() not in (0, None):
                folder = None  # rank 0 records the run, even one whose MPI failed to start
            comm = world()
            install_abort_hook(comm)  # an error on one rank ends the job instead of leaving the others waiting
            ranks, folder = comm.size, folder if comm.rank == 0 else None
            result = run_on_ranks(app, config, comm, verbose, here)
        elif engines == 0:
            result = run_on_ranks(app, config, SerialCommunicator(), verbose, here)
        else:
            ranks = engines if isinstance(engines, int) else getattr(engines, "n", 1)
            result = _on_engines(engines, _run_on_engine, (name, dataclasses.asdict(config), verbose), verbose,
                                 progress, stop, label=f"run_app({name!r})")
    except BaseException as e:
        if folder is not None:
            status = "failed" if isinstance(e, Exception) and not isinstance(e, Stopped) else "stopped"
            _record(folder, name, config, status, start, t0, engines, ranks, None, headline(e))
        raise
    if folder is not None:
        _record(folder, name, config, "finished", start, t0, engines, ranks, result, None)
    return result


def _history_folder(history, config) -> str | None:
    """Where the run is recorded: ``history``, or the Config's ``output_dir`` (None: nowhere)."""
    if history is False:
        return None
    if history is None:
        return getattr(config, "output_dir", None) or None
    if history is True or not isinstance(history, (str, os.PathLike)) or not os.fspath(history):
        raise ValueError(f"history: expected a folder, None (the Config's output_dir) or False, got {history!r}")
    return os.fspath(history)


def headline(error: BaseException, limit: int = 500) -> str:
    """One line for a failed run, at most ``limit`` characters: ``Type: first line``, or for an EngineError
    the failing ranks' last lines (what the panel's status and the run history show)."""
    failures = getattr(error, "failures", None)
    if failures:
        last = {r: next((line.strip() for line in reversed(tb.splitlines()) if line.strip()), "")
                for r, tb in failures.items()}
        text = (f"rank(s) {sorted(last)}: {next(iter(last.values()))}" if len(set(last.values())) == 1 else
                "; ".join(f"rank {r}: {line}" for r, line in sorted(last.items())))
    else:
        line = str(error).strip().partition("\n")[0]
        text = f"{type(error).__name__}: {line}" if line else type(error).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _record(folder, name, config, status, start, t0, engines, ranks, result, error) -> None:
    """One record in ``folder``'s history; a history that cannot be written is a warning, never the run's end
    (nor does it hide the run's own error)."""
    from . import history
    where = engines if isinstance(engines, int) else f"{type(engines).__name__}(n={ranks})"
    try:
        history.record(folder, name, dataclasses.asdict(config), status=status, start=start,
                       seconds=time.perf_counter() - t0, engines=where, ranks=ranks, error=error,
                       **({"metrics": result.metrics, "figures": result.figures, "files": result.files}
                          if result is not None else {}))
    except (OSError, ValueError, TypeError) as e:
        warnings.warn(f"run history: could not record this run in {folder}: {type(e).__name__}: {e}",
                      RuntimeWarning, stacklevel=3)


def run_workflow(control, *, engines=0, path=None, verbose: int = 1, progress=None,
                 stop: threading.Event | None = None):
    """Run the workflow ``control`` (a control file's path, a dict or a WorkflowSpec); its WorkflowResult.

    Args:
        engines: 0 -- in this process, on one rank (every stage must fit on one rank: no channels);
            N -- on N local MPI engines started for this call and stopped after; an
            :class:`hpcai.cluster.Engines` -- there (started, or restarted after its job ended, as needed).
            Under ``mpiexec`` (more than one rank) every process runs its part instead.
        path: a folder, or a list of folders, put first on ``sys.path`` wherever the modules run (here, or on
            every engine) while the workflow runs: where the modules' entry points are found. Relative
            folders are taken from this process's working directory. Engines must see the folder: the local
            ones do; Slurm or PBS engines need it on a shared file system. Modules the workflow imports from
            these folders are forgotten when it ends, so the next run imports them afresh (edits take effect).
            Without ``path``, entry points must be importable as they are: installed, or in the folder the
            engines started in (the working directory of the process that started them).
        verbose: 0 silent; 1 the engines' output is shown here as it comes (an application module's progress
            line on its rank 0).
        progress: ``progress(snapshots)``, one snapshot per rank, as the modules report through
            ``ctx.progress`` (as :func:`run_app` relays an application's).
        stop: an Event; once set, the run stops: on engines they are interrupted; in this process the
            module raises Stopped at its next ``ctx.progress`` update. This raises Stopped.

    Raises:
        SpecError: the control file is wrong, or the job has too few ranks for it (before any engine starts).
        ModuleFailed: a module raised, anywhere; the message names the module, its rank and the exception
            (on engines the engines' own report follows as its ``__cause__``, an EngineError).

    The control travels to the engines as JSON text (:meth:`WorkflowSpec.to_dict`, its file name kept for
    messages): module parameters must be JSON values.
    """
    from . import workflow
    _check_options(engines, progress, stop)
    spec = workflow.load(control)
    folders = checks.folders("path", path)
    if stop is not None and stop.is_set():
        raise Stopped("stopped before the workflow began")
    here = Progress([lambda snap: progress([snap])] if progress is not None else (), stop=stop)
    if launched_by_mpi():
        from .parallel import world
        with _search_path(folders):
            return workflow.run_workflow(spec, world(), verbose, here)
    if engines == 0:
        with _search_path(folders):
            return workflow.run_workflow(spec, SerialCommunicator(), verbose, here)
    spec.check_ranks(engines if isinstance(engines, int) else engines.n)  # before starting any engine
    try:
        text = json.dumps(spec.to_dict())
    except (TypeError, ValueError) as e:
        raise workflow.SpecError(f"{spec.source}: the control travels to the engines as JSON, and a module's "
                                 f"params are not JSON values: {e}") from None
    from .cluster import EngineError
    try:
        state = _on_engines(engines, _workflow_on_engine, (text, spec.source, verbose, folders), verbose, progress,
                            stop, label=f"run_workflow({spec.name!r})")
    except EngineError as e:
        found = _MODULE_FAILED.findall("\n".join([*e.failures.values(), e.output]))
        if not found:
            raise
        raise workflow.ModuleFailed(f"workflow {spec.name!r} ({spec.source}) on engines: {found[0]}") from e
    return workflow.WorkflowResult(**state)


def ensure_running(engines):
    """``engines`` started -- or restarted, when their MPI job has ended -- and returned."""
    if engines.running:
        return engines
    if engines.client is not None:
        engines.restart_sync()
    else:
        engines.start_sync()
    return engines


def _check_options(engines, progress, stop):
    if progress is not None and not callable(progress):
        raise TypeError(f"progress: expected a function progress(snapshots) or None, got {progress!r}")
    if stop is not None and not isinstance(stop, threading.Event):
        raise TypeError(f"stop: expected a threading.Event or None, got {stop!r}")
    if isinstance(engines, bool) or not (isinstance(engines, int) and engines >= 0 or hasattr(engines, "run_sync")):
        raise ValueError(f"engines: expected a number of engines >= 0 or an Engines, got {engines!r}")


def _on_engines(engines, fn, args, verbose, progress, stop, label):
    """``fn(*args)`` on every engine -- N local ones started for the call, or an Engines -- relaying their
    progress and interrupting them when ``stop`` is set (not once every rank has reported its run finished:
    that run ends as it would have, its results written and returned); rank 0's result. ``label`` names the
    call in errors (the application or workflow, not the engine-side function)."""
    from .cluster import EngineError, Engines
    if isinstance(engines, int):
        with Engines(n=engines) as cluster:
            return _on_engines(cluster, fn, args, verbose, progress, stop, label)
    engines = ensure_running(engines)
    if stop is not None and stop.is_set():
        raise Stopped("stopped before the run began")
    done, finished = threading.Event(), threading.Event()  # finished: every rank reported its run finished

    def watch():  # a stop asked for once every rank has finished is not needed: the results are on their way
        while not done.is_set():
            if stop.wait(0.1):
                if not finished.wait(_FINISH_GRACE) and not done.is_set():  # not once the run has returned
                    engines.interrupt_sync()
                return

    watcher = threading.Thread(target=watch, name="hpcai-stop-watch", daemon=True) if stop is not None else None
    if watcher is not None:
        watcher.start()

    def relay(datas):  # one snapshot per rank, in rank order ({} for a rank that has not reported yet)
        snapshots = [d.get("progress", {}) for d in datas]
        if snapshots and all(s.get("finished") for s in snapshots):
            finished.set()
        if progress is not None:
            progress(snapshots)
    try:
        results = engines.run_sync(fn, *args, stream=verbose > 0, on_data=relay, label=label)
    except EngineError:
        if stop is not None and stop.is_set() and not finished.is_set():
            raise Stopped("stopped by request: the engines were interrupted") from None
        raise
    finally:
        done.set()
    return results[0]


# -- what runs on the engines ---------------------------------------------------------------------------------
def _run_on_engine(name, config, verbose):
    """Engine side of :func:`run_app`: every rank runs the app on MPI's world, publishing its progress."""
    from hpcai.apps import APPS
    from hpcai.parallel import world
    app = APPS[name]
    return run_on_ranks(app, dataclasses.replace(app.config(), **config), world(), verbose,
                     Progress([publish_to_client], every=0.3))


def run_on_ranks(app, config, comm, verbose, progress):
    """``app`` (an :class:`~hpcai.apps.App`) on the ranks of ``comm``, every rank calling this: as its workflow
    where its ranks play different parts (or where the application is its workflow, ``run=None``, on any number
    of ranks), else its run; the Result. Every rank makes the workflow, so a bad Config raises the same error on
    every rank, and every rank runs rank 0's: a workflow may name a fresh folder (cbed's temporary data folder),
    and with a name of its own each rank would write to, and read from, a folder of its own."""
    if app.workflow is not None and (comm.size > 1 or app.run is None):
        from . import workflow
        made = app.workflow(config, comm.size, verbose)
        control, module = comm.bcast_obj(made if comm.rank == 0 else None)
        value = workflow.run_workflow(control, comm, verbose, progress).values[module]
        return Result(**{**value, "arrays": {k: np.asarray(v) for k, v in value["arrays"].items()}})
    return app.run(config, verbose=verbose if comm.rank == 0 else 0, comm=comm, progress=progress)


def _workflow_on_engine(text, source, verbose, folders):
    """Engine side of :func:`run_workflow`: every rank runs the workflow on MPI's world; a plain dict back."""
    from hpcai import workflow
    from hpcai.parallel import world
    spec = workflow.load(json.loads(text), source=source)
    with _search_path(folders):
        return dataclasses.asdict(workflow.run_workflow(spec, world(), verbose, Progress([publish_to_client],
                                                                                        every=0.3)))


@contextlib.contextmanager
def _search_path(folders):
    """``folders`` first on ``sys.path`` meanwhile; top-level modules imported from them meanwhile are forgotten
    after (only those: hpcai and anything loaded before stays), so the next run imports them afresh."""
    if not folders:
        yield
        return
    before = set(sys.modules)
    roots = {name.partition(".")[0] for name in before}
    sys.path[:0] = folders
    try:
        yield
    finally:
        for folder in folders:
            with contextlib.suppress(ValueError):
                sys.path.remove(folder)
        for name in set(sys.modules) - before:
            where = os.path.realpath(getattr(sys.modules.get(name), "__file__", None) or "/")
            if name.partition(".")[0] not in roots and any(where.startswith(os.path.join(f, "")) for f in folders):
                del sys.modules[name]
