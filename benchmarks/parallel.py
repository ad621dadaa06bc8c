"""Parallel training speed, measured under MPI (prints numbers; asserts nothing).

  python benchmarks/parallel.py                      # every section, about 2 minutes on 2 cores
  python benchmarks/parallel.py convert compressed   # chosen sections (about a minute)
  mpiexec -n 4 python benchmarks/parallel.py scaling # measure inside your own launch (rank 0 prints)

Run without mpiexec, the script launches itself as ``mpiexec -n N python benchmarks/parallel.py --child ...``
for each N it needs (the mpiexec next to this Python, one thread per rank) and reads the JSON that rank 0
prints. Sections:

- ``convert``: one core packing float32 gradients into fp16/bf16 words and unpacking them, GB/s of float32
  bytes, for each path: :mod:`hpcai.parallel.compression`'s kernels, numpy's float16 cast, ml_dtypes'
  bfloat16 cast (the median of alternating rounds, and the best round: what a quiet core does; goal >= 5
  GB/s). fp16 packs at the power-of-two scale DistributedOptimizer would pick for these gradients on 2 ranks.
- ``allreduce``: bandwidth (GB/s, bytes of the buffer / seconds) of ``Communicator.allreduce_`` against raw
  mpi4py ``comm.Allreduce`` on the same float32 buffers, 1 KiB to 64 MiB, 2 ranks; the ratio's goal is
  >= 0.9. Also the time of the same values reduced by MPI as fp16 and bf16 words.
- ``compressed``: DistributedOptimizer's whole exchange of one 4, 16 and 64 MiB float32 bucket on 2 ranks,
  fp16 and bf16 against fp32 (goal: within 1.3x), its parts (pack, words on the wire, unpack-and-sum), and
  the model ``exchange = convert + bytes / bandwidth`` fitted to them: the network bandwidth below which
  compression pays (break-even), and the model's prediction of the 2-rank run checked against the run.
- ``scaling``: one data-parallel training step (forward, backward, gradient exchange, SGD) of an MLP
  784-512-256-10 at 1, 2 and 4 ranks with a fixed batch of 64 per rank (weak scaling): ms per step, the
  part spent in the exchange, efficiency t(1) / t(N); then 2 ranks with fp16 and bf16 compression.
- ``async``: ``benchmarks/parallel_async.py``'s straggler study in simulated time (its measured mode takes
  minutes: ``python benchmarks/parallel_async.py measured``), when that file exists.

On a shared machine with 2 cores the numbers are noisy, and 4 ranks oversubscribe the cores: their step
time measures contention for cores, not MPI.
"""
from __future__ import annotations

import argparse
import functools
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
SECTIONS = ("convert", "allreduce", "compressed", "scaling", "async")
BUCKETS = [4 * 2 ** 20, 16 * 2 ** 20, 64 * 2 ** 20]  # the compressed section's bucket bytes (float32)


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


def _medians(cases: dict, rounds: int, timer) -> dict:
    """Median seconds per case over ``rounds`` rounds that run every case in turn (alternating, so that
    drifting machine load hits every case alike)."""
    times = {k: [] for k in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            times[name].append(timer(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def fp16_scale(max_abs: float, ranks: int) -> float:
    """The power of two DistributedOptimizer multiplies a bucket by before packing it as fp16 (the sum of
    ``ranks`` values up to ``max_abs`` stays below half of fp16's largest, 65504)."""
    return 2.0 ** (np.floor(np.log2(65504 / (2 * ranks * max_abs))))


def gradients(n: int, seed: int = 0):
    """``n`` float32 gradient-like values: normal, 1e-3 wide, every fifth zero (ReLU networks have many)."""
    x = (np.random.default_rng(seed).standard_normal(n) * 1e-3).astype(np.float32)
    x[::5] = 0
    return x


def conversion_cases(n: int) -> dict:
    """(codec, direction, path) -> a function converting ``n`` float32 gradients into preallocated arrays."""
    import ml_dtypes
    from hpcai.parallel.compression import get_codec
    x = gradients(n)
    s = fp16_scale(float(np.abs(x).max()), 2)
    y = np.empty(n, np.float32)
    f16, b16 = get_codec("fp16"), get_codec("bf16")
    w16, wb = f16.pack(x, np.empty(n, np.uint16), s), b16.pack(x, np.empty(n, np.uint16))
    half, brain = np.empty(n, np.float16), np.empty(n, ml_dtypes.bfloat16)
    scale, unscale = np.float32(s), np.float32(1 / s)
    return {
        ("fp16", "pack", "integer kernels"): lambda: f16.pack(x, w16, s),
        ("fp16", "pack", "numpy cast"): lambda: np.multiply(x, scale, out=half, casting="unsafe"),
        ("fp16", "unpack", "integer kernels"): lambda: f16.unpack(w16, y, 1 / s),
        ("fp16", "unpack", "numpy cast"): lambda: np.multiply(w16.view(np.float16), unscale, out=y),
        ("bf16", "pack", "integer kernels"): lambda: b16.pack(x, wb),
        ("bf16", "pack", "ml_dtypes cast"): lambda: np.copyto(brain, x, casting="unsafe"),
        ("bf16", "unpack", "integer kernels"): lambda: b16.unpack(wb, y),
        ("bf16", "unpack", "ml_dtypes cast"): lambda: np.copyto(y, wb.view(ml_dtypes.bfloat16)),
    }


def measure_conversion(rounds: int = 9) -> list:
    """GB/s (float32 bytes / s) of every conversion path at each of BUCKETS' sizes, one core: the median and
    the best of ``rounds`` alternating rounds (each one call: short enough to fit between other processes'
    time slices, so the best approaches a quiet core)."""
    rows = []
    for nbytes in BUCKETS:
        cases = conversion_cases(nbytes // 4)
        times = {k: [] for k in cases}
        for _ in range(rounds):
            for key, fn in cases.items():
                start = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - start)
        for key, t in times.items():
            rows.append({"bytes": nbytes, "codec": key[0], "direction": key[1], "path": key[2],
                         "gbs": nbytes / statistics.median(t) / 1e9, "best": nbytes / min(t) / 1e9})
    return rows


def measure_compressed(comm, rounds: int = 7) -> list:
    """Per bucket size: median seconds of DistributedOptimizer's exchange of one float32 bucket with
    compression none/fp16/bf16, and of its parts (pack, words on the wire, unpack-and-sum; fp32 allreduce_)."""
    from hpcai.nn import Parameter
    from hpcai.parallel.compression import get_codec
    rows = []
    for nbytes in BUCKETS:
        n = nbytes // 4
        p = Parameter(np.zeros(n, np.float32))
        g = gradients(n, seed=comm.rank)
        opts = {c: DistributedOptimizer(optim.SGD([p], lr=0.0), comm=comm, compression=c, bucket_bytes=nbytes)
                for c in ("none", "fp16", "bf16")}

        def exchange(opt):
            opt.zero_grad()
            p.grad = g
            opt.synchronize()
        cases = {c: (lambda opt=opt: exchange(opt)) for c, opt in opts.items()}
        buf, y = g.copy(), np.empty(n, np.float32)
        cases["allreduce fp32"] = lambda: comm.allreduce_(buf)
        largest = comm.allreduce_obj(float(np.abs(g).max()), "max")
        for c in ("fp16", "bf16"):  # the parts as the optimizer runs them
            codec, scale = get_codec(c), (fp16_scale(largest, comm.size) if c == "fp16" else 1.0)
            words = codec.pack(g, np.empty(n, np.uint16), scale)
            cases[f"pack {c}"] = functools.partial(codec.pack, g, words, scale)
            cases[f"unpack-sum {c}"] = functools.partial(codec.unpack_sum, comm.allgather(words), y,
                                                         1 / (scale * comm.size), finite=c == "fp16")
        gathered = np.empty((comm.size, n), np.uint16)  # into a buffer kept, as the optimizer gathers
        cases["words on the wire"] = lambda: comm.wait(comm.comm.Iallgather(words, gathered))
        reps = max(1, int(2e7 / nbytes))
        t = _medians(cases, rounds, lambda fn: _timed(comm, fn, reps))
        rows.append({"bytes": nbytes, "ranks": comm.size, **t})
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
    print("allreduce of float32 buffers, in place, sum (GB/s = buffer bytes / s; fp16/bf16: the same values as "
          "words MPI reduces, half the bytes, ms)")
    for r in rows:
        gbs = {k: r["bytes"] / r[k] / 1e9 for k in ("raw", "ours")}
        size = f"{r['bytes'] // 2 ** 20} MiB" if r["bytes"] >= 2 ** 20 else f"{r['bytes'] // 2 ** 10} KiB"
        report(f"{size}: allreduce_ GB/s", gbs["ours"], f"raw Allreduce {gbs['raw']:.3f} GB/s, ratio "
               f"{r['raw'] / r['ours']:.2f}; fp32 {r['ours'] * 1e3:.3f} ms, fp16 {r['fp16'] * 1e3:.3f} ms, "
               f"bf16 {r['bf16'] * 1e3:.3f} ms")


def convert(report=report) -> None:
    rows = measure_conversion()
    print("fp16/bf16 conversion of float32 gradients, one core, into preallocated arrays (GB/s of float32 bytes, "
          "median of alternating rounds; goal >= 5)")
    for r in rows:
        report(f"{r['bytes'] // 2 ** 20} MiB {r['codec']} {r['direction']}, {r['path']}: GB/s", r["gbs"],
               f"best round {r['best']:.2f} GB/s")


def compressed(report=report) -> None:
    rows = measure_compressed(world()) if under_mpiexec() else launch(2, "compressed")
    n = rows[0]["ranks"]
    print(f"DistributedOptimizer's exchange of one float32 bucket on {n} ranks, compressed vs fp32 (median ms of "
          f"alternating rounds; goal: ratio <= 1.3)")
    for r in rows:
        mib = f"{r['bytes'] // 2 ** 20} MiB"
        for c in ("fp16", "bf16"):
            report(f"{mib} {c}: compressed / fp32 exchange", r[c] / r["none"],
                   f"{r[c] * 1e3:.2f} ms vs {r['none'] * 1e3:.2f} ms; pack {r[f'pack {c}'] * 1e3:.2f} ms, words on "
                   f"the wire {r['words on the wire'] * 1e3:.2f} ms, unpack-and-sum "
                   f"{r[f'unpack-sum {c}'] * 1e3:.2f} ms; "
                   f"fp32 allreduce_ {r['allreduce fp32'] * 1e3:.2f} ms")
    print("model: exchange = convert + bytes / bandwidth. A ring allreduce sends 2 (N-1)/N x 4 bytes per value; "
          "compressed, each rank packs, sends (N-1) x 2 bytes per value (allgather) and unpacks N rows")
    for c in ("fp16", "bf16"):
        for r in rows:
            b, conv = r["bytes"], r[f"pack {c}"] + r[f"unpack-sum {c}"]
            full, half = 2 * (n - 1) / n * b, (n - 1) * b / 2
            here = full / r["allreduce fp32"]  # the bandwidth the fp32 allreduce achieved here
            overhead = r["none"] - r["allreduce fp32"]  # what the optimizer adds around the exchange (both cases)
            predicted = overhead + conv + half / here
            breakeven = (full - half) / conv
            at = ", ".join(f"{w:g} GB/s: {(conv + half / (w * 1e9)) / (full / (w * 1e9)):.2f}x"
                           for w in (1.25, 3, 12.5, 50))
            report(f"{b // 2 ** 20} MiB {c}: break-even bandwidth GB/s", breakeven / 1e9,
                   f"(compression pays below it); converting at {b / conv / 1e9:.2f} GB/s; compressed/fp32 at {at}; "
                   f"here ({here / 1e9:.1f} GB/s) predicted {predicted * 1e3:.2f} ms, measured {r[c] * 1e3:.2f} ms")


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
    parallel_async.run(report, sections=("simulated",))
    print("  (the same study in measured time: python benchmarks/parallel_async.py measured)")


def child(section: str, compression: str) -> None:
    comm = world()
    measure = {"allreduce": measure_allreduce, "compressed": measure_compressed}.get(section)
    result = measure(comm) if measure else measure_scaling(comm, compression)
    if comm.rank == 0:
        print_result(result)


def main(argv=None) -> None:
    parser = section_parser(__doc__, SECTIONS)
    parser.add_argument("--child", choices=["allreduce", "compressed", "scaling"], help=argparse.SUPPRESS)
    parser.add_argument("--compression", default="none", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args.compression)
    chosen = chosen_sections(parser, args, SECTIONS)
    inside = under_mpiexec()  # under your own mpiexec: every rank measures, rank 0 prints
    for name, fn in (("convert", convert), ("allreduce", allreduce), ("compressed", compressed),
                     ("scaling", scaling), ("async", run_async)):
        if name not in chosen or (name in ("async", "convert") and inside):
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
