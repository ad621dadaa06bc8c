"""Precision benchmark: what fp16/bf16 matrix products and the split-fp16 GEMM cost and how accurate they are.

For each (m, k, n) in ``shapes`` (default 512x512x512 and 256x1024x256, float32): the fp32 product (plain
``matmul``), ``lowp_matmul`` in fp16 and bf16, ``split_gemm`` (fp16x3, scales per k-block) and
``split_gemm(block=None)`` ("unblocked": one scale per row/column over all of k, the earlier scheme):
median time of interleaved repetitions, time ratio to fp32, and relative Frobenius error vs an fp64
product for standard-normal operands. Then the wide case, A D and D**-1 B with d = logspace(-6, 6) along
k: errors of fp32 and both splits. Then rounding throughput (``round_to`` on 1e7 float32 values) vs a
plain ``astype``. Runs on cupy when a GPU is usable, else numpy; about 5 s on 2 CPU cores.

Run alone with ``python benchmarks/core_precision.py``; ``benchmarks/core.py`` calls ``run(report)``.
Only prints: never asserts on time.
"""
import statistics
import sys
import time
from pathlib import Path

import ml_dtypes
import numpy as np

if not __package__:  # run as a script from a checkout: make the package and _common importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from hpcai import backend, precision  # noqa: E402


def _medians(cases, repeats, xp):
    """Median seconds per case; cases interleaved so drifting clocks and load hit all alike."""
    for fn in cases.values():  # warm-up: BLAS threads, cuBLAS handles, kernel compilation
        fn()
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            backend.synchronize() if xp is not np else None
            t = time.perf_counter()
            fn()
            backend.synchronize() if xp is not np else None
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _rel_error(got, want):
    """Relative Frobenius error of ``got`` vs the float64 ``want``."""
    return np.linalg.norm(backend.to_host(got).astype(np.float64) - want) / np.linalg.norm(want)


def _case(xp, rng, m, k, n, d=1.0):
    """float32 operands ``A D`` and ``D**-1 B`` (standard normal A, B; ``d`` along k) on ``xp``, their fp64
    product, and the products to measure on them."""
    a_h = (rng.standard_normal((m, k)) * d).astype(np.float32)
    b_h = (rng.standard_normal((k, n)) / np.reshape(d, (-1, 1))).astype(np.float32)
    a, b = xp.asarray(a_h), xp.asarray(b_h)
    products = {
        "fp32": lambda: xp.matmul(a, b),
        "fp16": lambda: precision.lowp_matmul(a, b, "fp16"),
        "bf16": lambda: precision.lowp_matmul(a, b, "bf16"),
        "fp16x3": lambda: precision.split_gemm(a, b),
        "fp16x3 unblocked": lambda: precision.split_gemm(a, b, block=None),
    }
    return a_h.astype(np.float64) @ b_h.astype(np.float64), products


def run(report, shapes=((512, 512, 512), (256, 1024, 256)), repeats=7, size=10**7):
    """Measure and ``report(name, value, unit_or_note)`` each number."""
    xp = backend._cupy if backend.GPU_AVAILABLE else np
    report("precision device", 0, "cuda (cupy)" if xp is not np else "cpu (numpy)")
    rng = np.random.default_rng(0)
    for m, k, n in shapes:
        shape = f"{m}x{k}x{n}"
        want, products = _case(xp, rng, m, k, n)
        times = _medians(products, repeats, xp)
        for name, fn in products.items():
            report(f"matmul {name} {shape}", times[name] * 1e3, "ms")
            if name != "fp32":
                report(f"matmul {name} time / fp32 {shape}", times[name] / times["fp32"], "ratio")
            report(f"matmul {name} error {shape}", _rel_error(fn(), want), "rel. Frobenius vs fp64")
        # Wide range along k: every term matters alike, and fp16/bf16 alone overflow (errors only)
        want, products = _case(xp, rng, m, k, n, d=np.logspace(-6, 6, k))
        for name in ("fp32", "fp16x3", "fp16x3 unblocked"):
            report(f"matmul {name} error {shape} wide", _rel_error(products[name](), want),
                   "rel. Frobenius vs fp64, A D and D^-1 B, d = logspace(-6, 6) along k")

    x = xp.asarray(rng.standard_normal(size, dtype=np.float32))
    rounding = {
        "astype float16": lambda: x.astype(xp.float16),
        "round_to fp16": lambda: precision.round_to(x, "fp16"),
        "round_to bf16": lambda: precision.round_to(x, "bf16"),
    }
    if xp is np:  # cupy has no bfloat16 dtype to compare with
        rounding["astype bfloat16"] = lambda: x.astype(ml_dtypes.bfloat16)
    times = _medians(rounding, max(3, repeats // 2), xp)
    for name, t in times.items():
        report(f"{name} ({size:.0e} float32)", size / t / 1e9, "Gvalues/s")
    report("round_to fp16 time / astype float16", times["round_to fp16"] / times["astype float16"], "ratio")
    baseline = "astype bfloat16" if xp is np else "astype float16"
    report(f"round_to bf16 time / {baseline}", times["round_to bf16"] / times[baseline], "ratio")


if __name__ == "__main__":
    from _common import report
    run(report)
