"""Parallel training speed, measured under MPI (prints numbers; asserts nothing).

  python benchmarks/parallel.py                      # every section, about a minute on 2 cores
  python benchmarks/parallel.py allreduce scaling    # chosen sections
  mpiexec -n 4 python benchmarks/parallel.py scaling # measure inside your own launch (rank 0 prints)

Run without mpiexec, the script launches itself as ``mpiexec -n N python benchmarks/parallel.py --child ...``
for each N it needs (the mpiexec next to this Python, one thread per rank) and reads the JSON that rank 0
prints. Sections:

- ``allreduce``: bandwidth (GB/s, bytes of the buffer / seconds) of ``Communicator.allreduce_`` against raw
  mpi4py ``comm.Allreduce`` on the same float32 buffers, 1 KiB to 64 MiB, 2 ranks; the ratio's goal is
  >= 0.9. Also the time of the same values exchanged as fp16 and bf16 (DistributedOptimizer's compression).
- ``scaling``: one data-parallel training step (forward, backward, gradient exchange, SGD) of an MLP
  784-512-256-10 at 1, 2 and 4 ranks with a fixed batch of 64 per rank (weak scaling): ms per step, the
  part spent in the exchange, efficiency t(1) / t(N); then 2 ranks with fp16 and bf16 compression.
- ``async``: ``benchmarks/parallel_async.py``'s ``run(report)``, when that file exists.

On a shared machine with 2 cores the numbers are noisy, and 4 ranks oversubscribe the cores: their step
time measures contention for cores, not MPI.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from _common import (chosen_sections, mpi_run, print_result, report, section_parser,  # noqa: E402
                     under_mpiexec)

from hpcai import Tensor, nn, optim  # noqa: E402
from hpcai.ops.loss import cross_entropy  # noqa: E402
from hpcai.parallel.comm import world  # noqa: E402
from hpcai.parallel.data_parallel import DistributedOptimizer  # noqa: E402

SIZES = [2 ** k for k in range(10, 27, 2)]  # 1 KiB .. 64 MiB
SECTIONS = ("allreduce", "scaling", "async")


# -- measurements, inside an MPI launch --------------------------------------------------------------------
def _timed(comm, fn, reps: int) -> float:
    """Seconds per call of ``fn`` over ``reps`` calls, started together, as the slowest rank saw it."""
    comm.barrier()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return comm.allreduce_obj((time.perf_counter() - start) / reps, "max")


def measure_allreduce(comm, rounds: int = 7) -> list:
    """Per buffer size: seconds per call of raw Allreduce, allreduce_, and allreduce_ in fp16 and bf16 (the
    best of ``rounds`` interleaved rounds: the least disturbed by other work on the machine)."""
    import ml_dtypes
    MPI, raw = comm.MPI, comm.comm
    rows = []
    for nbytes in SIZES:
        buf = np.zeros(nbytes // 4, np.float32)  # zeros: sums never reach inf or subnormals
        half, brain = buf.astype(np.float16), buf.astype(ml_dtypes.bfloat16)
        reps = max(2, min(300, int(3e7 / nbytes)))
        cases = {"raw": lambda: raw.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM), "ours": lambda: comm.allreduce_(buf),
                 "fp16": lambda: comm.allreduce_(half), "bf16": lambda: comm.allreduce_(brain)}
        times = {k: [] for k in cases}
        for _ in range(rounds):  # interleaved, so that drifting machine load hits every case alike
            for name, fn in cases.items():
                times[name].append(_timed(comm, fn, reps))
        rows.append({"bytes": nbytes, **{k: min(v) for k, v in times.items()}})
    return rows


def measure_scaling(comm, compression: str = "none", batch: int = 64, steps: int = 15) -> dict:
    """Median seconds per training step and in the gradient exchange, MLP 784-512-256-10, ``batch`` per rank."""
    model = nn.Sequential(nn.Linear(784, 512, rng=0), nn.ReLU(), nn.Linear(512, 256, rng=1), nn.ReLU(),
                          nn.Linear(256, 10, rng=2))
    opt = DistributedOptimizer(optim.SGD(model.parameters(), lr=0.01, momentum=0.9), comm=comm,
                               compression=compression)
    rng = np.random.default_rng(comm.rank)
    x, y = rng.standard_normal((batch, 784)).astype(np.float32), rng.integers(0, 10, batch)
    step_times, exchange_times = [], []
    for i in range(steps + 3):
        comm.barrier()
        start = time.perf_counter()
        opt.zero_grad()
        cross_entropy(model(Tensor(x)), Tensor(y)).backward()
        mid = time.perf_counter()
        opt.synchronize()
        exchanged = time.perf_counter()
        opt.step()
        if i >= 3:  # after warm-up
            step_times.append(time.perf_counter() - start)
            exchange_times.append(exchanged - mid)
    step = comm.allreduce_obj(statistics.median(step_times), "max")
    exchange = comm.allreduce_obj(statistics.median(exchange_times), "max")
    return {"ranks": comm.size, "compression": compression, "batch": batch, "step": step, "exchange": exchange,
            "params": model.num_parameters()}


# -- launching ------------------------------------------------------------------------------------------------
def launch(n: int, *child_args: str):
    """Run this script's ``--child`` mode on ``n`` ranks; return the JSON its rank 0 printed."""
    return mpi_run(n, [os.path.abspath(__file__), "--child", *child_args], needed_by="parallel.py")


# -- sections ------------------------------------------------------------------------------------------------
def allreduce(report=report) -> None:
    rows = measure_allreduce(world()) if under_mpiexec() else launch(2, "allreduce")
    print("allreduce of float32 buffers, in place, sum (GB/s = buffer bytes / s; fp16/bf16: same values, half "
          "the bytes, ms)")
    for r in rows:
        gbs = {k: r["bytes"] / r[k] / 1e9 for k in ("raw", "ours")}
        size = f"{r['bytes'] // 2 ** 20} MiB" if r["bytes"] >= 2 ** 20 else f"{r['bytes'] // 2 ** 10} KiB"
        report(f"{size}: allreduce_ GB/s", gbs["ours"], f"raw Allreduce {gbs['raw']:.3f} GB/s, ratio "
               f"{r['raw'] / r['ours']:.2f}; fp32 {r['ours'] * 1e3:.3f} ms, fp16 {r['fp16'] * 1e3:.3f} ms, "
               f"bf16 {r['bf16'] * 1e3:.3f} ms")


def scaling(report=report) -> None:
    if under_mpiexec():
        runs = [measure_scaling(world())]
    else:
        runs = [launch(n, "scaling") for n in (1, 2, 4)]
        runs += [launch(2, "scaling", "--compression", c) for c in ("fp16", "bf16")]
    print(f"data-parallel step, MLP 784-512-256-10 ({runs[0]['params']} parameters), batch {runs[0]['batch']} per "
          f"rank (weak scaling), SGD momentum, fp32")
    base = next((r["step"] for r in runs if r["ranks"] == 1), None)
    for r in runs:
        eff = f", efficiency {base / r['step']:.2f}" if base and r["compression"] == "none" else ""
        samples = r["ranks"] * r["batch"] / r["step"]
        report(f"{r['ranks']} rank(s), compression {r['compression']}: ms/step", r["step"] * 1e3,
               f"exchange (with waiting) {r['exchange'] * 1e3:.2f} ms, {samples:.0f} samples/s{eff}")


def run_async(report=report) -> None:
    if not os.path.exists(os.path.join(HERE, "parallel_async.py")):
        print("async: benchmarks/parallel_async.py not present; skipped")
        return
    import parallel_async
    parallel_async.run(report)


def child(section: str, compression: str) -> None:
    comm = world()
    result = measure_allreduce(comm) if section == "allreduce" else measure_scaling(comm, compression)
    if comm.rank == 0:
        print_result(result)


def main(argv=None) -> None:
    parser = section_parser(__doc__, SECTIONS)
    parser.add_argument("--child", choices=["allreduce", "scaling"], help=argparse.SUPPRESS)
    parser.add_argument("--compression", default="none", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args.compression)
    chosen = chosen_sections(parser, args, SECTIONS)
    inside = under_mpiexec()  # under your own mpiexec: every rank measures, rank 0 prints
    for name, fn in (("allreduce", allreduce), ("scaling", scaling), ("async", run_async)):
        if name not in chosen or (name == "async" and inside):
            continue
        if inside and world().rank != 0:
            _quiet(fn)
        else:
            fn(report)


def _quiet(fn) -> None:
    """Take part in a section's measurement without printing (ranks other than 0)."""
    stdout, sys.stdout = sys.stdout, open(os.devnull, "w")
    try:
        fn(report)
    finally:
        sys.stdout.close()
        sys.stdout = stdout


if __name__ == "__main__":
    main()
