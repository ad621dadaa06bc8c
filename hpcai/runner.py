"""Run a registered application where the user asked: in this process, as this MPI job's part, or on engines.

One function for the CLI, the control panel and notebooks::

    result = run_app("digits", {"precision": "mixed-bf16"}, engines=2, progress=print)

Progress comes back the same way from everywhere: ``progress(snapshots)`` with one snapshot dict per rank
(:meth:`hpcai.apps.progress.Progress.snapshot`); on engines they travel through ipyparallel's
``publish_data``. Setting the ``stop`` event stops the run: in this process the application raises
:class:`~hpcai.apps.progress.Stopped` at its next step; on engines they are interrupted (SIGINT).
"""
from __future__ import annotations

import dataclasses
import threading

from .apps import APPS, make_config
from .apps.progress import Progress, Stopped, publish_to_client
from .parallel.comm import launched_by_mpi


def run_app(name: str, config=None, *, engines=0, verbose: int = 1, progress=None, stop: threading.Event | None = None,
            **overrides):
    """Run application ``name``; returns its Result (the same on every rank; rank 0's from engines).

    Args:
        config: its Config, a dict of Config fields, or None for the defaults; ``overrides`` by keyword.
        engines: 0 -- in this process; N -- on N local MPI engines started for this call and stopped after;
            an :class:`hpcai.cluster.Engines` -- there (started, or restarted after its job ended, as needed).
            Under ``mpiexec`` (more than one rank) every process runs its rank's part instead.
        progress: ``progress(snapshots)``, a list with one snapshot per rank, as the run goes.
        stop: an Event; once set the run stops (raising Stopped here).
    """
    config = make_config(name, config, **overrides)
    app = APPS[name]
    if progress is not None and not callable(progress):
        raise TypeError(f"progress: expected a function progress(snapshots) or None, got {progress!r}")
    if stop is not None and not isinstance(stop, threading.Event):
        raise TypeError(f"stop: expected a threading.Event or None, got {stop!r}")
    if isinstance(engines, bool) or not (isinstance(engines, int) and engines >= 0 or hasattr(engines, "run_sync")):
        raise ValueError(f"engines: expected a number of engines >= 0 or an Engines, got {engines!r}")
    here = Progress([lambda snap: progress([snap])] if progress is not None else (), stop=stop)
    if launched_by_mpi():
        from .parallel import install_abort_hook, world
        comm = world()
        install_abort_hook(comm)  # an error on one rank ends the job instead of leaving the others waiting
        return app.run(config, verbose=verbose if comm.rank == 0 else 0, comm=comm, progress=here)
    if engines == 0:
        return app.run(config, verbose=verbose, progress=here)
    if isinstance(engines, int):
        from .cluster import Engines
        with Engines(n=engines) as cluster:
            return _on(cluster, name, config, verbose, progress, stop)
    return _on(ensure_running(engines), name, config, verbose, progress, stop)


def ensure_running(engines):
    """``engines`` started -- or restarted, when their MPI job has ended -- and returned."""
    if engines.running:
        return engines
    if engines.client is not None:
        engines.restart_sync()
    else:
        engines.start_sync()
    return engines


def _on(engines, name, config, verbose, progress, stop):
    """Run on ``engines``, relaying their progress and interrupting them when ``stop`` is set."""
    from .cluster import EngineError
    done = threading.Event()

    def watch():
        while not done.is_set():
            if stop.wait(0.1):
                engines.interrupt_sync()
                return

    watcher = threading.Thread(target=watch, name="hpcai-stop-watch", daemon=True) if stop is not None else None
    if watcher is not None:
        watcher.start()
    def relay(datas):  # one snapshot per rank, in rank order ({} for a rank that has not reported yet)
        progress([d.get("progress", {}) for d in datas])
    try:
        results = engines.run_sync(_run_on_engine, name, dataclasses.asdict(config), verbose, stream=verbose > 0,
                                   on_data=relay if progress is not None else None)
    except EngineError:
        if stop is not None and stop.is_set():
            raise Stopped("stopped by request: the engines were interrupted") from None
        raise
    finally:
        done.set()
    return results[0]


def _run_on_engine(name, config, verbose):
    """Engine side of :func:`run_app`: every rank runs the app on MPI's world, publishing its progress."""
    from hpcai.apps import APPS
    from hpcai.parallel import world
    comm = world()
    app = APPS[name]
    return app.run(dataclasses.replace(app.config(), **config), verbose=verbose if comm.rank == 0 else 0, comm=comm,
                   progress=Progress([publish_to_client], every=0.3))
