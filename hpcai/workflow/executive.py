"""The Executive: runs a workflow's modules, each on its own ranks, in the order the control file gives.

Every rank of the job calls :func:`run_workflow` with the same control file. The last
``tuple_space.servers`` ranks serve the tuple space (on more than one rank; one rank keeps it in-process);
the others are the *workers*. For every stage of the plan the workers split into one communicator per
module (module order, ranks in order) and run that module's ``main(ctx)``; workers a stage does not need
wait for the next one. A module that raises ends the whole job within seconds with its name, rank and
traceback (MPI_Abort on more than one rank; a :class:`ModuleFailed` in a one-rank run): never a hang.
Each module's return value on its rank 0 (JSON: a dict, a list, numbers; an application's
:class:`~hpcai.apps.Result` as a dict of its fields, arrays as lists) is collected and returned to every
rank, so the same workflow gives the same answer under ``mpiexec`` and on engines.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sys
import threading
import time
import traceback

import numpy as np

from ..apps import APPS, Result, make_config
from ..apps.progress import Stopped, as_progress
from ..io import json_default
from ..parallel import messages, tuplespace
from ..parallel.comm import Communicator, SerialCommunicator, install_abort_hook, world
from . import spec as _spec
from .context import CHANNEL_TAG0, Channel, Context

RESULT_TAG = 900  # a module's rank 0 sends its value to worker 0 on this tag (and the next, for arrays)


class ModuleFailed(RuntimeError):
    """A module raised (one-rank runs; on more ranks the job is aborted with the same message)."""


@dataclasses.dataclass
class WorkflowResult:
    """What a workflow returned: each module's value (its last, in a loop), the loop's rounds, seconds per module."""

    values: dict
    iterations: int
    seconds: dict

    def __getitem__(self, module: str):
        return self.values[module]


def _entry(module: _spec.ModuleSpec, verbose: int):
    """The callable main(ctx) of a module: its entry point, or an application run on the module's ranks."""
    if module.entry is not None:
        return _spec.resolve_entry(module.entry)
    app = APPS[module.app]

    def run_app(ctx):
        config = make_config(module.app, dict(ctx.params))
        return app.run(config, verbose=verbose if ctx.rank == 0 else 0, comm=ctx.comm, progress=ctx.progress)
    return run_app


def _jsonable(value):
    """A module's value as JSON (an application's Result as a dict of its fields, arrays as lists)."""
    if isinstance(value, Result):
        value = dataclasses.asdict(value)
    return json.loads(json.dumps(value, default=json_default))


def _bcast_json(comm, value):
    """``value`` (JSON) from rank 0 to every rank of ``comm``, as bytes (nothing is pickled)."""
    raw = np.frombuffer(json.dumps(value).encode(), np.uint8) if comm.rank == 0 else None
    n = np.array([raw.size if raw is not None else 0], np.int64)
    comm.bcast_(n)
    buf = raw.copy() if raw is not None else np.empty(int(n[0]), np.uint8)
    comm.bcast_(buf)
    return json.loads(buf.tobytes().decode())


class _NoSpace:
    """``ctx.space`` of a workflow whose control file declares no tuple space: any use says so."""

    def __init__(self, source):
        self.source = source

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __getattr__(self, name):
        raise RuntimeError(f"{self.source}: this workflow has no tuple space; add a [tuple_space] table "
                           f"(servers = 1) to its control file")


class _Job:
    """One rank's part of a workflow run."""

    def __init__(self, spec, comm, verbose, progress):
        self.spec, self.world, self.verbose, self.progress = spec, comm, verbose, as_progress(progress)
        servers = spec.tuple_space.servers if comm.size > 1 else 0
        self.servers = list(range(comm.size - servers, comm.size))
        self.is_server = comm.rank in self.servers
        mpi = isinstance(comm, Communicator)
        self.links = comm.dup() if mpi else comm
        self.space_comm = comm.dup() if mpi and self.servers else None
        # the servers are the last ranks, so a worker's rank is its world rank: what channels address
        self.workers = comm.split(int(self.is_server), comm.rank) if mpi else comm
        self.log = logging.getLogger(f"hpcai.workflow.{spec.name}")
        self.values, self.seconds, self.iterations = {}, {}, 0

    # -- the plan ----------------------------------------------------------------------------------------
    def run(self) -> WorkflowResult:
        if self.is_server:
            tuplespace.serve(self.space_comm, server=self.servers[0], max_bytes=self.spec.tuple_space.max_bytes)
            return self._finish()
        if self.space_comm is not None:
            self.space = tuplespace.TupleSpace(self.space_comm, server=self.servers[0])
        elif self.spec.tuple_space.servers:
            self.space = tuplespace.LocalTupleSpace(max_bytes=self.spec.tuple_space.max_bytes)
        else:
            self.space = _NoSpace(self.spec.source)
        with self.space:
            for step in self.spec.plan():
                if isinstance(step, tuple):
                    self._stage(step, 0)
                    continue
                for iteration in range(step.max_iterations):
                    self.iterations = iteration + 1
                    for stage in step.stages:
                        self._stage(stage, iteration)
                    done = self.values.get(step.until)
                    if isinstance(done, dict) and done.get("done") is True:
                        break
        return self._finish()

    def _finish(self) -> WorkflowResult:
        """Every rank (servers included) leaves with worker 0's values."""
        self.world.barrier(poll=True)
        state = {"values": self.values, "iterations": self.iterations, "seconds": self.seconds}
        if self.world.size > 1:
            state = _bcast_json(self.world, state)  # world rank 0 is worker 0
            for comm in {id(c): c for c in (self.links, self.space_comm, self.workers) if c is not None}.values():
                comm.free()
        return WorkflowResult(**state)

    # -- one stage: every module of it at once, each on its own ranks -------------------------------------
    def _stage(self, stage, iteration):
        modules = [self.spec.modules[name] for name in stage]
        owners, first = {}, 0
        for module in modules:  # worker ranks in module order
            owners[module.name] = list(range(first, first + module.ranks))
            first += module.ranks
        mine = next((m for m in modules if self.workers.rank in owners[m.name]), None)
        color = stage.index(mine.name) if mine is not None else len(stage)
        comm = self.workers.split(color, self.workers.rank)
        value = None
        if mine is not None:
            start = time.perf_counter()
            value = self._module(mine, comm, owners, iteration)
            self.seconds[mine.name] = self.seconds.get(mine.name, 0.0) + time.perf_counter() - start
        self._collect(modules, mine, comm, value)
        if comm is not self.workers:
            comm.free()  # a loop splits anew every round; MPI has a few thousand communicators at most

    def _module(self, module, comm, owners, iteration):
        ctx = Context(module.name, comm, dict(module.params), self.space, self.progress,
                      self.log.getChild(module.name), iteration, self._channels(module, owners))
        try:
            return _jsonable(_entry(module, self.verbose)(ctx))
        except Stopped:
            raise  # asked to stop through ctx.progress, not a failure (on several ranks the abort hook ends the job)
        except Exception as exc:  # noqa: BLE001 - any failure of a module ends the workflow, named
            where = f"module {module.name!r} (rank {comm.rank} of {comm.size}, job rank {self.world.rank}) failed"
            summary = f"{where}: {type(exc).__name__}: {exc}"
            if self.world.size == 1:
                raise ModuleFailed(summary) from exc
            sys.stderr.write(f"[hpcai workflow {self.spec.name!r}] {where}; ending the workflow\n"
                             f"{traceback.format_exc()}")
            if sys.__stderr__ is not None and sys.stderr is not sys.__stderr__:
                # on an engine sys.stderr goes to the client, and an aborted job never hands it over: one line
                # to the process's own stderr (the MPI job's output) names the failure there
                sys.__stderr__.write(f"ModuleFailed: {summary}".replace("\n", " | ") + "\n")
                sys.__stderr__.flush()
            self.world.abort(1)

    def _channels(self, module, owners) -> dict:
        """This module's channels that run now: each a link to the module at its other end."""
        links = {}
        for k, ch in enumerate(self.spec.channels):
            if module.name not in (ch.source, ch.dest) or not {ch.source, ch.dest} <= owners.keys():
                continue
            outgoing = module.name == ch.source
            peer = ch.dest if outgoing else ch.source
            base = CHANNEL_TAG0 + 4 * k
            tags = (base, base + 2) if outgoing else (base + 2, base)  # (send, receive)
            links[ch.name] = Channel(ch.name, self.links, tags, peer, owners[peer])
        return links

    def _collect(self, modules, mine, comm, value):
        """Each module's rank 0 sends its value to worker 0, which keeps them all (in module order)."""
        if mine is not None and comm.rank == 0:
            report = {"module": mine.name, "value": value, "seconds": self.seconds[mine.name]}
            if self.workers.rank == 0:
                self._keep(report)
            else:
                messages.send(self.links, report, 0, RESULT_TAG)
        if self.workers.rank == 0:
            for _ in range(len(modules) - (mine is not None)):
                self._keep(messages.recv(self.links, None, RESULT_TAG)[0])
        if self.workers.size > 1:  # the loop's condition is read on every worker
            self.values, self.seconds = _bcast_json(self.workers, [self.values, self.seconds])

    def _keep(self, report):
        self.values[report["module"]] = report["value"]
        self.seconds[report["module"]] = report["seconds"]


def run_workflow(control, comm=None, verbose: int = 1, progress=None) -> WorkflowResult:
    """Run the workflow ``control`` (a control file's path, a dict, or a WorkflowSpec) on this job's ranks.

    ``comm``: the job's communicator (default MPI's world when mpi4py is there, else one rank). Every rank
    calls this; every rank returns the same :class:`WorkflowResult`. ``progress``: this rank's
    :class:`~hpcai.apps.progress.Progress` (or a callable receiving its snapshots), the ``ctx.progress`` of
    the module it runs, so that an application run as a workflow reports as it does on its own.
    """
    spec = _spec.load(control)
    comm = comm if comm is not None else world()
    if not isinstance(comm, SerialCommunicator):
        raise TypeError(f"comm: expected an hpcai Communicator or None, got {type(comm).__name__}")
    spec.check_ranks(comm.size)
    hooks = sys.excepthook, threading.excepthook
    if comm.size > 1:
        install_abort_hook(comm)  # an error outside the modules ends the job too, never a hang
    try:
        return _Job(spec, comm, verbose, progress).run()
    finally:  # the process may outlive the workflow (an engine): no hook of this run stays behind
        sys.excepthook, threading.excepthook = hooks
