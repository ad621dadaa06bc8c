"""Workflow data movement: channel messages vs raw mpi4py, tuple space vs Dask (prints numbers; asserts nothing).

  python benchmarks/workflow.py                      # every section, about 45 s on 2 cores
  python benchmarks/workflow.py --quick              # fewer sizes, shorter runs: about 10 s (5 s without Dask)
  python benchmarks/workflow.py p2p                  # chosen sections
  mpiexec -n 4 python benchmarks/workflow.py space   # measure inside your own launch (rank 0 prints)

Run without mpiexec, the script launches itself as ``mpiexec -n N python benchmarks/workflow.py --child ...``
for each N it needs (the mpiexec next to this Python, one thread per rank) and reads the JSON that rank 0
prints. Sections:

- ``p2p``: ping-pong between ranks 0 and 1 of ``hpcai.parallel.messages.send``/``recv`` (what a workflow
  Channel does: a JSON header, then the array's bytes into a new array) against raw mpi4py ``Send``/``Recv``
  of the same numpy buffers (into one reused array). Latency: microseconds per round trip of 8 B and 1 KiB.
  Bandwidth: GB/s (buffer bytes / one-way time, half the round trip), 64 KiB to 64 MiB; the ratio's goal is
  >= 0.9 for large buffers. Beside it, ``messages.recv(out=...)`` into a reused array, and raw ``Recv`` into
  a new array each time: a new array's fresh pages cost as much as the copy at 64 MiB (glibc maps and unmaps
  blocks over 32 MiB), whichever library receives. Then the CPU a receiving rank burns while it waits 0.5 s
  for a message (raw ``Recv`` spins; hpcai's polling yields the core, which matters when ranks outnumber
  cores).
- ``space``: tuple-space put+get pairs per second, 1 server rank and N - 1 client ranks (N = 2 and 4), each
  client putting a payload under one shared key and taking one back (so the space works as a shared queue),
  against a Dask ``distributed.Queue`` on a ``LocalCluster`` of N - 1 worker processes (the scheduler in
  this process plays the server) running the same loop with the same payloads. Dask is optional
  (``pip install distributed``); without it that column is skipped.

On 2 cores, 4 ranks (or 3 Dask workers and the scheduler) oversubscribe the cores: their numbers measure how
well waiting processes give their core to working ones as much as the messaging itself. Timings on a shared
machine are noisy; each case is the best of a few interleaved rounds.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from _common import (chosen_sections, mpi_run, print_result, report, section_parser,  # noqa: E402
                     under_mpiexec)

from hpcai.parallel import messages  # noqa: E402
from hpcai.parallel.comm import world  # noqa: E402
from hpcai.parallel.tuplespace import TupleSpace, serve  # noqa: E402

SECTIONS = ("p2p", "space")
TAG = 10                                                    # messages use TAG (header) and TAG + 1 (payload)
LATENCY_SIZES = (8, 1024)
BANDWIDTH_SIZES = tuple(2 ** k for k in range(16, 27, 2))  # 64 KiB .. 64 MiB
QUICK_BANDWIDTH_SIZES = (2 ** 16, 2 ** 20, 2 ** 24)
PAYLOADS = (8, 2 ** 16)                                     # bytes of each tuple-space / Dask queue item
SPACE_RANKS = (2, 4)
IDLE_WAIT = 0.5                                             # seconds a receiver waits in the idle-CPU case


def _settings(quick: bool) -> dict:
    """Repetitions and durations: the defaults keep the whole run under a minute on 2 cores."""
    if quick:
        return {"latency_reps": 100, "rounds": 2, "sizes": QUICK_BANDWIDTH_SIZES, "seconds": 0.3, "payloads": (8,),
                "space_rounds": 1}
    return {"latency_reps": 1000, "rounds": 5, "sizes": BANDWIDTH_SIZES, "seconds": 1.5, "payloads": PAYLOADS,
            "space_rounds": 2}


def _size(nbytes: int) -> str:
    for unit, scale in (("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if nbytes >= scale:
            return f"{nbytes // scale} {unit}"
    return f"{nbytes} B"


# -- point to point, inside an MPI launch ------------------------------------------------------------------------
def _round_trip(comm, send, recv, reps: int) -> float:
    """Seconds per round trip 0 -> 1 -> 0 (``send(peer)``, ``recv(peer)``), over ``reps`` of them."""
    comm.barrier()
    start = time.perf_counter()
    if comm.rank == 0:
        for _ in range(reps):
            send(1)
            recv(1)
    elif comm.rank == 1:
        for _ in range(reps):
            recv(0)
            send(0)
    return comm.bcast_obj((time.perf_counter() - start) / reps)


def _idle_cpu(comm, send, recv) -> float:
    """CPU seconds per wall second that rank 0 spends in ``recv(1)`` while rank 1 sleeps before ``send(0)``."""
    comm.barrier()
    busy = None
    if comm.rank == 1:
        time.sleep(IDLE_WAIT)
        send(0)
    elif comm.rank == 0:
        wall, cpu = time.perf_counter(), time.process_time()
        recv(1)
        busy = (time.process_time() - cpu) / (time.perf_counter() - wall)
    return comm.bcast_obj(busy)


def _p2p_cases(comm, buf, out) -> dict:
    """name -> (send(peer), recv(peer)) for one buffer size."""
    raw = comm.comm

    def raw_send(peer):
        raw.Send(buf, dest=peer, tag=TAG)

    def ours_send(peer):
        messages.send(comm, buf, peer, TAG)

    return {"raw": (raw_send, lambda peer: raw.Recv(out, source=peer, tag=TAG)),
            "raw_new": (raw_send, lambda peer: raw.Recv(np.empty_like(out), source=peer, tag=TAG)),
            "ours": (ours_send, lambda peer: messages.recv(comm, peer, TAG)),
            "ours_out": (ours_send, lambda peer: messages.recv(comm, peer, TAG, out=out))}


def measure_p2p(comm, settings: dict) -> dict:
    """Round-trip seconds per size (best of interleaved rounds) of raw Send/Recv into one buffer or into a new
    array each time, and of messages.send/recv into a new array (a Channel) or into ``out=``; and the CPU a
    waiting receiver uses."""
    if comm.size < 2:
        raise SystemExit("p2p needs 2 ranks (mpiexec -n 2)")
    rows = []
    for nbytes in LATENCY_SIZES + tuple(settings["sizes"]):
        buf = np.random.default_rng(nbytes).random(nbytes // 8)
        cases = _p2p_cases(comm, buf, np.empty_like(buf))
        reps = settings["latency_reps"] if nbytes in LATENCY_SIZES else max(3, min(200, int(1e8 / nbytes)))
        times = {k: [] for k in cases}
        for _ in range(settings["rounds"]):  # interleaved, so that drifting machine load hits every case alike
            for name, (send, recv) in cases.items():
                times[name].append(_round_trip(comm, send, recv, reps))
        rows.append({"bytes": nbytes, **{k: min(v) for k, v in times.items()}})
    idle = {name: _idle_cpu(comm, *_p2p_cases(comm, np.zeros(1), np.empty(1))[name]) for name in ("ours", "raw")}
    return {"rows": rows, "idle": idle}


# -- the tuple space, inside an MPI launch -------------------------------------------------------------------
def measure_space(comm, settings: dict) -> dict:
    """Put+get pairs per second of all clients together, per payload size: rank 0 serves, every other rank
    loops put("item", payload); get("item") for ``settings["seconds"]`` (best of ``space_rounds`` rounds)."""
    if comm.size < 2:
        raise SystemExit("the tuple space needs 2 or more ranks (a server and clients)")
    client = comm.rank != 0
    clients = comm.split(int(client))
    rates = {}
    for nbytes in settings["payloads"]:
        best = 0.0
        for _ in range(settings["space_rounds"]):
            space = comm.dup()
            pairs, elapsed = 0, 0.0
            if not client:
                serve(space)
            else:
                ts, value = TupleSpace(space, 0), np.ones(max(1, nbytes // 8))
                for _ in range(20):  # warm-up
                    ts.put("item", value)
                    ts.get("item")
                clients.barrier()
                start = time.perf_counter()
                while elapsed < settings["seconds"]:
                    ts.put("item", value)
                    ts.get("item")
                    pairs += 1
                    elapsed = time.perf_counter() - start
                ts.close()
            best = max(best, comm.allreduce_obj(pairs) / comm.allreduce_obj(elapsed, "max"))
        rates[str(nbytes)] = best
    return {"ranks": comm.size, "rates": rates}


# -- the Dask peer, in this process --------------------------------------------------------------------------
def _dask_client(nbytes: int, seconds: float, name: str) -> tuple:
    """A Dask task: the tuple-space client's loop on a shared ``distributed.Queue``; (pairs, seconds)."""
    from distributed import Event, Queue
    queue, value = Queue(name), np.ones(max(1, nbytes // 8))
    for _ in range(20):  # warm-up
        queue.put(value)
        queue.get()
    Queue(name + "-ready").put(1)
    Event(name + "-go").wait()
    pairs, elapsed, start = 0, 0.0, time.perf_counter()
    while elapsed < seconds:
        queue.put(value)
        queue.get()
        pairs += 1
        elapsed = time.perf_counter() - start
    return pairs, elapsed


def measure_dask(workers: int, settings: dict) -> dict | None:
    """Pairs per second of ``workers`` Dask worker processes each running :func:`_dask_client`, per payload size
    (best of ``space_rounds``); None when ``distributed`` is not installed."""
    try:
        from distributed import Client, Event, LocalCluster, Queue
    except ImportError:
        return None
    rates = {}
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        addresses = sorted(client.scheduler_info()["workers"])
        for nbytes in settings["payloads"]:
            best = 0.0
            for round_ in range(settings["space_rounds"]):
                name = f"items-{nbytes}-{round_}"
                futures = [client.submit(_dask_client, nbytes, settings["seconds"], name, workers=[a], pure=False)
                           for a in addresses]
                ready = Queue(name + "-ready", client=client)
                for _ in addresses:
                    ready.get()
                Event(name + "-go", client=client).set()
                done = client.gather(futures)
                best = max(best, sum(p for p, _ in done) / max(s for _, s in done))
            rates[str(nbytes)] = best
    return {"ranks": workers + 1, "rates": rates}


# -- sections ------------------------------------------------------------------------------------------------
def _args(quick: bool, section: str) -> list:
    return [os.path.abspath(__file__), "--child", section] + (["--quick"] if quick else [])


def p2p(quick: bool, report=report) -> None:
    settings = _settings(quick)
    result = measure_p2p(world(), settings) if under_mpiexec() else \
        mpi_run(2, _args(quick, "p2p"), needed_by="workflow.py")
    print("point to point, ranks 0 <-> 1: hpcai messages.send/recv (a workflow Channel's path: a new array per "
          "message) vs raw mpi4py Send/Recv on the same numpy buffers (into one reused array)")
    for r in result["rows"]:
        if r["bytes"] in LATENCY_SIZES:
            report(f"{_size(r['bytes'])}: messages round trip us", r["ours"] * 1e6,
                   f"raw Send/Recv {r['raw'] * 1e6:.1f} us, ratio raw/ours {r['raw'] / r['ours']:.2f}")
        else:
            gbs = {k: r["bytes"] / (r[k] / 2) / 1e9 for k in ("raw", "raw_new", "ours", "ours_out")}
            report(f"{_size(r['bytes'])}: messages GB/s", gbs["ours"],
                   f"raw Send/Recv {gbs['raw']:.2f} GB/s, ratio {r['raw'] / r['ours']:.2f}; recv(out=) "
                   f"{gbs['ours_out']:.2f} GB/s, ratio {r['raw'] / r['ours_out']:.2f}; raw into a new array "
                   f"{gbs['raw_new']:.2f}")
    idle = result["idle"]
    report(f"waiting {IDLE_WAIT} s in recv: CPU busy fraction", idle["ours"],
           f"raw Recv {idle['raw']:.2f} (1 = a whole core spent waiting)")


def space(quick: bool, report=report) -> None:
    settings = _settings(quick)
    inside = under_mpiexec()
    ours = [measure_space(world(), settings)] if inside else \
        [mpi_run(n, _args(quick, "space"), needed_by="workflow.py") for n in SPACE_RANKS]
    if inside and world().rank != 0:
        world().barrier(poll=True)  # rank 0 runs the Dask peer meanwhile; waiting here yields the core
        return
    dask = [measure_dask(r["ranks"] - 1, settings) for r in ours]
    if inside:
        world().barrier(poll=True)
    print("tuple space put+get pairs per second, 1 server + N-1 client ranks sharing one key, vs a Dask "
          "distributed.Queue (LocalCluster scheduler + N-1 worker processes)")
    if dask[0] is None:
        print("  (Dask column skipped: distributed is not installed; pip install distributed to compare)")
    for r, d in zip(ours, dask, strict=True):
        for nbytes, rate in r["rates"].items():
            note = "" if d is None else \
                f"Dask Queue {d['rates'][nbytes]:.0f} pairs/s, ratio ours/Dask {rate / d['rates'][nbytes]:.2f}"
            report(f"{r['ranks']} ranks, {_size(int(nbytes))} items: pairs/s", rate, note)


def child(section: str, quick: bool) -> None:
    comm = world()
    result = (measure_p2p if section == "p2p" else measure_space)(comm, _settings(quick))
    if comm.rank == 0:
        print_result(result)


def main(argv=None) -> None:
    parser = section_parser(__doc__, SECTIONS)
    parser.add_argument("--quick", action="store_true", help="fewer sizes and shorter runs (a few seconds)")
    parser.add_argument("--child", choices=SECTIONS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args.quick)
    chosen = chosen_sections(parser, args, SECTIONS)
    inside = under_mpiexec()  # under your own mpiexec: every rank measures, rank 0 prints
    for name, fn in (("p2p", p2p), ("space", space)):
        if name not in chosen:
            continue
        if inside and world().rank != 0 and name == "p2p":
            _quiet(fn, args.quick)
        else:
            fn(args.quick, report)


def _quiet(fn, quick: bool) -> None:
    """Take part in a section's measurement without printing (ranks other than 0)."""
    stdout, sys.stdout = sys.stdout, open(os.devnull, "w")
    try:
        fn(quick, report)
    finally:
        sys.stdout.close()
        sys.stdout = stdout


if __name__ == "__main__":
    main()
