"""Precision benchmark: what fp16/bf16 matrix products and the split-fp16 GEMM cost and how accurate they are.

Measures, on n x n float32 matrices (n=1024), the fp32 product, ``lowp_matmul`` in fp16 and bf16 and
``split_gemm`` (fp16x3): median time of interleaved repetitions, time ratio to fp32, and relative
Frobenius error vs an fp64 product. Then rounding throughput (``round_to`` on 1e7 float32 values) vs a
plain ``astype``. Runs on cupy when a GPU is usable, else numpy; about 15 s on 2 CPU cores.

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


def run(report, n=1024, repeats=7, size=10**7):
    """Measure and ``report(name, value, unit_or_note)`` each number."""
    xp = backend._cupy if backend.GPU_AVAILABLE else np
    report("precision device", 0, "cuda (cupy)" if xp is not np else "cpu (numpy)")
    rng = np.random.default_rng(0)
    a_h, b_h = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
    want = a_h.astype(np.float64) @ b_h.astype(np.float64)
    a, b = xp.asarray(a_h), xp.asarray(b_h)

    products = {
        "fp32": lambda: xp.matmul(a, b),
        "fp16": lambda: precision.lowp_matmul(a, b, "fp16"),
        "bf16": lambda: precision.lowp_matmul(a, b, "bf16"),
        "fp16x3": lambda: precision.split_gemm(a, b),
    }
    times = _medians(products, repeats, xp)
    for name, fn in products.items():
        got = backend.to_host(fn()).astype(np.float64)
        report(f"matmul {name} n={n}", times[name] * 1e3, "ms")
        report(f"matmul {name} time / fp32", times[name] / times["fp32"], "ratio")
        report(f"matmul {name} error", np.linalg.norm(got - want) / np.linalg.norm(want), "rel. Frobenius vs fp64")

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
