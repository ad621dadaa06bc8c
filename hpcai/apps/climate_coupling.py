"""Climate SR on several MPI ranks: rank 0 simulates, the other ranks learn, and the simulation never waits.

Rank 0 (the *producer*) runs the model, compresses and stores every output step and sends it on with
non-blocking sends: each training step (compressed + original field) to every learner, each held-out step
to the first learner, which evaluates. Send buffers stay alive in a list until their requests complete;
inside the simulation loop completed requests are only reclaimed with ``Test``, and the one ``Waitall``
comes after the last step. Ranks 1..n-1 (the *learners*, a communicator of their own from ``split``)
train one model data-parallel: every learner samples its own minibatches from the pairs it holds (its
own seed), and :class:`~hpcai.parallel.data_parallel.DistributedOptimizer` averages the gradients. Between
iterations they poll with ``Iprobe``: post a receive for what arrived (``Irecv``, so a large message still
in transit never blocks training), train on what they have, stop on the end message. Each iteration the
learners agree (one small ``allreduce``) on whether to train and whether the data are complete, so their
collectives never go out of step. Once the data are complete they train the serial run's in situ budget
(if not yet spent) and then ``final_epochs``, in fewer iterations with more learners (global batch).
While the simulation runs, how many iterations fit depends on timing, so coupled runs are not bitwise
reproducible; the stored data are (they come from rank 0 alone, as in the serial run).

Messages to learners are float64 arrays ``[step, time (s), compressed field, original field]`` (the end
message: one number). Afterwards the first learner sends the evaluation (and the weights) to rank 0, which
writes the files and broadcasts the Result, so every rank returns the same one.

A bad parameter is found on rank 0 before anything runs and raised on every rank alike. Any later
exception on any rank is printed with its rank and ends the whole job with ``MPI_Abort``, so no rank is
left waiting for one that died.
"""
from __future__ import annotations

import math
import sys
import time
import traceback

import numpy as np

from .climate_sr import Result, _finish, _Learner, _Producer, _progress
from .progress import as_progress

PAIR, HELD, END, PROGRESS, EVALUATION = 1, 2, 3, 4, 5
_POLL_S = 0.005  # sleep between polls while idle: MPI's blocking calls would spin on a core a learner needs


def run_coupled(config, comm, verbose: int = 1, progress=None) -> Result:
    """Run ``config`` with rank 0 producing and ranks 1.. learning; every rank returns the same Result.

    ``progress`` (each rank's own): rank 0 reports the simulation, the learners their training.
    """
    progress = as_progress(progress)
    start = time.perf_counter()
    producer, grid = None, None
    if comm.rank == 0:
        try:
            producer = _Producer(config)
            grid = {"lat": producer.lat, "lon": producer.lon}
        except (ValueError, FloatingPointError) as exc:
            grid = {"error": exc}
    grid = comm.bcast_obj(grid, root=0)
    if "error" in grid:
        raise grid["error"]
    try:
        learners = comm.split(0 if comm.rank == 0 else 1, comm.rank)
        if comm.rank == 0:
            result = _produce(config, comm, producer, start, verbose, progress)
        else:
            _learn(config, comm, learners, grid["lat"], grid["lon"], verbose, progress)
            result = None
        result = comm.bcast_obj(result, root=0)
        progress.finish()
        learners.comm.Free()
        return result
    except Exception:
        sys.stderr.write(f"[hpcai climate_sr rank {comm.rank}/{comm.size}] failed; aborting all ranks\n"
                         f"{traceback.format_exc()}")
        sys.stderr.flush()
        comm.abort(1)
        raise  # only reached by the serial stand-in, whose abort raises SystemExit


def _produce(config, comm, producer, start, verbose, progress) -> Result:
    """Rank 0: simulate, compress, store, send; then collect the learners' evaluation and finish."""
    MPI, world = comm.MPI, comm.comm
    everyone = range(1, comm.size)
    pending = []  # (request, buffer): a buffer must outlive its non-blocking send

    def send(buf, tag, destinations):
        for dest in destinations:
            pending.append((world.Isend([buf, MPI.DOUBLE], dest=dest, tag=tag), buf))

    def on_output(model):
        k, t, original, compressed, held = producer.output(model)
        t0 = time.perf_counter()
        message = np.concatenate([[k, t], compressed.ravel(), original.ravel()])
        send(message, HELD if held else PAIR, [1] if held else everyone)
        pending[:] = [(req, buf) for req, buf in pending if not req.Test()]  # reclaim, never wait
        producer.timers["sends"] += time.perf_counter() - t0
        if verbose:
            producer.report(k, t, held)
        progress.update(k + 1, message=f"day {t / 86400:.2f}")

    progress.phase("simulation", producer.outputs)
    producer.run(on_output)
    progress.phase("waiting for the learners", 0)
    send(np.zeros(1), END, everyone)
    MPI.Request.Waitall([req for req, _ in pending])
    pending.clear()
    status = MPI.Status()
    while True:
        while not world.Iprobe(source=1, tag=MPI.ANY_TAG, status=status):
            time.sleep(_POLL_S)
        message = world.recv(source=1, tag=status.Get_tag())
        if status.Get_tag() == EVALUATION:
            break
        if verbose:
            _progress(*message)
    producer.timers["training"] = message.pop("seconds_training")
    return _finish(config, producer, message, start, ranks=comm.size, verbose=verbose)


def _learn(config, comm, learners, lat, lon, verbose, progress) -> None:
    """Ranks 1..n-1: train data-parallel on what has arrived while the simulation runs, then finish training;
    the first learner evaluates on the held-out steps and sends the evaluation to rank 0."""
    MPI, world = comm.MPI, comm.comm
    learner = _Learner(config, lat, lon, comm=learners, seed=config.seed + 1000 * (learners.rank + 1),
                       progress=progress)
    progress.phase("in situ training", 0)
    shape, n = (config.nlat, config.nlon), config.nlat * config.nlon
    held_out, inbox, ended, status, agreed = [], [], False, MPI.Status(), np.zeros(2)
    while True:
        while not (inbox and inbox[-1][2] == END) and world.Iprobe(source=0, tag=MPI.ANY_TAG, status=status):
            tag, buf = status.Get_tag(), np.empty(status.Get_count(MPI.DOUBLE))
            inbox.append((world.Irecv([buf, MPI.DOUBLE], source=0, tag=tag), buf, tag))  # matches the probed one
        while inbox and inbox[0][0].Test():  # in the order sent: the end message comes after every step
            _, buf, tag = inbox.pop(0)
            if tag == END:
                ended = True
                continue
            compressed, original = buf[2:2 + n].reshape(shape), buf[2 + n:].reshape(shape)
            if tag == PAIR:
                learner.add(compressed, original)
            else:
                held_out.append((buf[1], original, compressed))
        agreed[:] = (len(learner.inputs), ended)
        learners.allreduce_(agreed, "min")  # the fewest pairs any learner has; whether all have every step
        if agreed[1]:
            break
        if agreed[0] == 0:
            time.sleep(_POLL_S)
            continue
        learner.train(1)
    in_situ = math.ceil(config.iters_per_output * len(learner.inputs) / learners.size)
    learner.train(max(0, in_situ - len(learner.losses)))  # the serial run's in situ budget, if not yet spent
    root = learners.rank == 0
    printer = (lambda *a: world.send(a, dest=0, tag=PROGRESS)) if root and verbose else None
    learner.train_final(progress=printer)
    if root:
        evaluation = learner.evaluate(held_out, np.cos(np.radians(lat))[:, None])
        evaluation["seconds_training"] = learner.seconds
        world.send(evaluation, dest=0, tag=EVALUATION)
