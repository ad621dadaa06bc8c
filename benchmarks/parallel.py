"""Parallel training speed, measured under MPI (prints numbers; asserts nothing).

  python benchmarks/parallel.py                      # every section, about 2 minutes on 2 cores
  python benchmarks/parallel.py convert compressed   # chosen sections (about a minute)
  mpiexec -n 4 python benchmarks/parallel.py scaling # measure inside your own launch (rank 0 prints)

Run without mpiexec, the script launches itself as ``mpiexec -n N python benchmarks/parallel.py --child ...``
for each N it needs (the mpiexec next to this Python, one thread per rank) and reads the JSON that rank 0
prints. Sections:

- ``convert``: one core packing float32 gradients into fp16/bf16 words (alone, and keeping the rounding
  error for error feedback), unpacking them, and unpacking-and-summing two ranks' rows: GB/s of float32
  bytes for each path: :mod:`hpcai.parallel.compression`'s compiled loops (numba, where installed), its
  numpy chunks (the path without numba), and numpy's float16 / ml_dtypes' bfloat16 cast (the median of
  alternating rounds, and the best round: what a quiet core does; goal >= 5 GB/s). fp16 packs at the
  power-of-two scale DistributedOptimizer would pick for these gradients on 2 ranks.
- ``allreduce``: bandwidth (GB/s, bytes of the buffer / seconds) of ``Communicator.allreduce_`` against raw
  mpi4py ``comm.Allreduce`` on the same float32 buffers, 1 KiB to 64 MiB, 2 ranks; the ratio's goal is
  >= 0.9. Also the time of the same values reduced by MPI as fp16 and bf16 words.
- ``compressed``: DistributedOptimizer's whole exchange of one 4, 16 and 64 MiB float32 bucket on 2 ranks,
  fp16 and bf16 against fp32 (goal: within 1.3x), its parts (the gradient's copy into the bucket, what
  finding fp16's largest ``|g|`` adds to it, pack, words on the wire, unpack-and-sum), and the model
  ``exchange = convert + bytes / bandwidth`` fitted to them: the network bandwidth below which compression
  pays (break-even), and the model's prediction of the 2-rank run checked against the run. ``--rounds R``
  sets the alternating rounds (default 7).
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


COMPILED, CHUNKS = "compiled", "numpy chunks"  # the codecs' two paths (numba loops; numpy without numba)


def _on(path: str, fn):
    """``fn`` run on one of the codecs' paths: the compiled loops, or the numpy chunks (numba switched off)."""
    from hpcai import accel
    if path == COMPILED:
        return fn

    def numpy_path():
        with accel.disabled():
            return fn()
    return numpy_path


def conversion_cases(n: int) -> dict:
    """(codec, operation, path) -> a function converting ``n`` float32 gradients into preallocated arrays.
    Operations: pack, pack keeping the rounding error (error feedback), unpack, unpack-and-sum of 2 rows."""
    import ml_dtypes
    from hpcai.parallel.compression import get_codec
    x = gradients(n)
    s = fp16_scale(float(np.abs(x).max()), 2)
    y, res = np.empty(n, np.float32), np.empty(n, np.float32)
    f16, b16 = get_codec("fp16"), get_codec("bf16")
    w16, wb = f16.pack(x, np.empty(n, np.uint16), s), b16.pack(x, np.empty(n, np.uint16))
    r16, rb = np.stack([w16, w16[::-1]]), np.stack([wb, wb[::-1]])  # two ranks' words
    half, brain = np.empty(n, np.float16), np.empty(n, ml_dtypes.bfloat16)
    scale, unscale = np.float32(s), np.float32(1 / s)
    cases = {}
    for path in (COMPILED, CHUNKS):
        cases.update({
            ("fp16", "pack", path): _on(path, lambda: f16.pack(x, w16, s)),
            ("fp16", "pack + residual", path): _on(path, lambda: f16.pack(x, w16, s, residual=res)),
            ("fp16", "unpack", path): _on(path, lambda: f16.unpack(w16, y, 1 / s)),
            ("fp16", "unpack-sum 2 rows", path): _on(path, lambda: f16.unpack_sum(r16, y, 1 / (2 * s), finite=True)),
            ("bf16", "pack", path): _on(path, lambda: b16.pack(x, wb)),
            ("bf16", "pack + residual", path): _on(path, lambda: b16.pack(x, wb, residual=res)),
            ("bf16", "unpack", path): _on(path, lambda: b16.unpack(wb, y)),
            ("bf16", "unpack-sum 2 rows", path): _on(path, lambda: b16.unpack_sum(rb, y, 0.5)),
        })
    cases.update({
        ("fp16", "pack", "numpy cast"): lambda: np.multiply(x, scale, out=half, casting="unsafe"),
        ("fp16", "unpack", "numpy cast"): lambda: np.multiply(w16.view(np.float16), unscale, out=y),
        ("bf16", "pack", "ml_dtypes cast"): lambda: np.copyto(brain, x, casting="unsafe"),
        ("bf16", "unpack", "ml_dtypes cast"): lambda: np.copyto(y, wb.view(ml_dtypes.bfloat16)),
    })
    return cases


def measure_conversion(rounds: int = 9) -> list:
    """GB/s (float32 bytes / s) of every conversion path at each of BUCKETS' sizes, one core: the median and
    the best of ``rounds`` alternating rounds (each one call: short enough to fit between other processes'
    time slices, so the best approaches a quiet core)."""
    rows = []
    for nbytes in BUCKETS:
        cases = conversion_cases(nbytes // 4)
        for fn in cases.values():  # compiles the numba loops (or loads them from numba's cache)
            fn()
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
    compression none/fp16/bf16, and of its parts (the gradient copied into the bucket, alone and finding the
    largest |g|; pack, words on the wire, unpack-and-sum; fp32 allreduce_), each as the optimizer runs it."""
    from hpcai.nn import Parameter
    from hpcai.parallel import data_parallel
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
        bucket = np.empty(n, np.float32)  # the gradient into the bucket: fp32's copy, fp16's with max |g| found
        cases["copy"] = functools.partial(np.copyto, bucket, g)
        cases["copy + max |g|"] = functools.partial(data_parallel._last_pass, bucket, g, True)
        gathered = np.empty((comm.size, n), np.uint16)  # a buffer kept, packed into and gathered in place
        for c in ("fp16", "bf16"):  # the parts as the optimizer runs them
            codec, scale = get_codec(c), (fp16_scale(largest, comm.size) if c == "fp16" else 1.0)
            words = codec.pack(g, gathered[comm.rank], scale)
            cases[f"pack {c}"] = functools.partial(codec.pack, g, words, scale)
            cases[f"unpack-sum {c}"] = functools.partial(codec.unpack_sum, comm.allgather(words), y,
                                                         1 / (scale * comm.size), finite=c == "fp16")
        cases["words on the wire"] = lambda: comm.allgather(gathered[comm.rank], out=gathered)
        reps = max(1, int(2e7 / nbytes))
        for fn in cases.values():  # warm-up: numba's loops compiled (or loaded from its cache), pages touched
            fn()
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
    from hpcai import accel
    rows = measure_conversion()
    compiled = accel.numba_installed() and os.environ.get("HPCAI_NUMBA", "1") not in ("0", "false", "no", "off")
    print(f"fp16/bf16 conversion of float32 gradients, one core, into preallocated arrays (GB/s of float32 bytes, "
          f"median of alternating rounds [best round]; goal >= 5); '{COMPILED}': numba's loops"
          f"{'' if compiled else ' (numba absent or switched off: the numpy chunks ran)'}")
    by_op: dict = {}
    for r in rows:
        by_op.setdefault((r["bytes"], r["codec"], r["direction"]), []).append(r)
    for (nbytes, codec, op), paths in by_op.items():
        main = next(r for r in paths if r["path"] == COMPILED)
        others = ", ".join(f"{r['path']} {r['gbs']:.2f} [{r['best']:.2f}]" for r in paths if r is not main)
        report(f"{nbytes // 2 ** 20} MiB {codec} {op}: GB/s", main["gbs"],
               f"[{main['best']:.2f}] {COMPILED}; {others}")


def _max_seconds(r: dict) -> float:
    """What finding fp16's largest |g| adds to copying the gradient into the bucket (the same pass)."""
    return max(0.0, r["copy + max |g|"] - r["copy"])


def _convert_seconds(r: dict, c: str) -> float:
    """What compression ``c`` adds to the exchange besides moving words: packing and unpacking-and-summing;
    fp16 also finds the largest |g| (its scale) while copying the gradient into the bucket, while bf16
    packs the gradient straight into the words instead of copying it (one backward pass per step)."""
    extra = _max_seconds(r) if c == "fp16" else -r["copy"]
    return max(r[f"pack {c}"] + r[f"unpack-sum {c}"] + extra, 1e-9)


def compressed(report=report, rounds: int = 7) -> None:
    rows = measure_compressed(world(), rounds) if under_mpiexec() else \
        launch(2, "compressed", "--rounds", str(rounds))
    n = rows[0]["ranks"]
    print(f"DistributedOptimizer's exchange of one float32 bucket on {n} ranks, compressed vs fp32 (median ms of "
          f"{rounds} alternating rounds; goal: ratio <= 1.3)")
    for r in rows:
        mib = f"{r['bytes'] // 2 ** 20} MiB"
        for c in ("fp16", "bf16"):
            largest = f"max |g| {_max_seconds(r) * 1e3:.2f} ms, " if c == "fp16" else \
                f"(instead of the fp32 copy {r['copy'] * 1e3:.2f} ms) "
            report(f"{mib} {c}: compressed / fp32 exchange", r[c] / r["none"],
                   f"{r[c] * 1e3:.2f} ms vs {r['none'] * 1e3:.2f} ms; {largest}pack {r[f'pack {c}'] * 1e3:.2f} ms, "
                   f"words on the wire {r['words on the wire'] * 1e3:.2f} ms, unpack-and-sum "
                   f"{r[f'unpack-sum {c}'] * 1e3:.2f} ms; "
                   f"fp32 allreduce_ {r['allreduce fp32'] * 1e3:.2f} ms")
    print("model: exchange = convert + bytes / bandwidth. A ring allreduce sends 2 (N-1)/N x 4 bytes per value; "
          "compressed, each rank packs, sends (N-1) x 2 bytes per value (allgather) and unpacks N rows; "
          "convert = pack + unpack-and-sum, + for fp16 what finding max |g| adds to the gradient's copy into the "
          "bucket, - for bf16 that copy (it packs straight from the gradient)")
    for c in ("fp16", "bf16"):
        for r in rows:
            b, conv = r["bytes"], _convert_seconds(r, c)
            full, half = 2 * (n - 1) / n * b, (n - 1) * b / 2
            here = full / r["allreduce fp32"]  # the bandwidth the fp32 allreduce achieved here
            overhead = r["none"] - r["allreduce fp32"]  # what the optimizer adds around the exchange (both cases)
            predicted = overhead + conv + half / here
            parts = overhead + conv + r["words on the wire"]  # the same sum with the gather's own time
            breakeven = (full - half) / conv
            at = ", ".join(f"{w:g} GB/s: {(conv + half / (w * 1e9)) / (full / (w * 1e9)):.2f}x"
                           for w in (1.25, 3, 12.5, 50))
            report(f"{b // 2 ** 20} MiB {c}: break-even bandwidth GB/s", breakeven / 1e9,
                   f"(compression pays below it); converting at {b / conv / 1e9:.2f} GB/s; compressed/fp32 at {at}; "
                   f"here ({here / 1e9:.1f} GB/s) predicted {predicted * 1e3:.2f} ms (with the gather's measured "
                   f"time {parts * 1e3:.2f} ms), measured {r[c] * 1e3:.2f} ms")


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


def child(section: str, compression: str, rounds: int) -> None:
    comm = world()
    measure = {"allreduce": measure_allreduce, "compressed": functools.partial(measure_compressed, rounds=rounds)}
    result = measure[section](comm) if section in measure else measure_scaling(comm, compression)
    if comm.rank == 0:
        print_result(result)


def main(argv=None) -> None:
    parser = section_parser(__doc__, SECTIONS)
    parser.add_argument("--child", choices=["allreduce", "compressed", "scaling"], help=argparse.SUPPRESS)
    parser.add_argument("--compression", default="none", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds of the compressed section")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds: expected a positive integer, got {args.rounds}")
    if args.child:
        return child(args.child, args.compression, args.rounds)
    chosen = chosen_sections(parser, args, SECTIONS)
    inside = under_mpiexec()  # under your own mpiexec: every rank measures, rank 0 prints
    for name, fn in (("convert", convert), ("allreduce", allreduce), ("compressed", compressed),
                     ("scaling", scaling), ("async", run_async)):
        if name not in chosen or (name in ("async", "convert") and inside):
            continue
        if name == "compressed":
            fn = functools.partial(fn, rounds=args.rounds)
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
