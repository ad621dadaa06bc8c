"""Core engine speed, measured side by side with its peers in one run (prints ratios; asserts nothing).

  python benchmarks/core.py            # all sections, about a minute on 2 cores
  python benchmarks/core.py overhead matmul

Sections: per-op overhead against raw numpy on tiny arrays; matmul forward+backward against raw BLAS;
conv2d forward+backward against PyTorch CPU (when installed); fp16/bf16/split-fp16 products against fp32.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import blas_threads, report  # noqa: E402

from hpcai import Tensor, ops  # noqa: E402


def median_time(fn, repeat: int = 7, number: int = 1, warmup: int = 1) -> float:
    """Median seconds per call of ``fn`` over ``repeat`` rounds of ``number`` calls."""
    for _ in range(warmup):
        fn()
    rounds = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        rounds.append((time.perf_counter() - start) / number)
    return statistics.median(rounds)


def overhead(report=report) -> None:
    """Cost of going through Tensor + Function + graph recording, on 8x8 arrays where it dominates."""
    print("per-op overhead on 8x8 float32 (forward with graph recording; µs per call, hpcai vs raw numpy)")
    rng = np.random.default_rng(0)
    a_np, b_np = rng.standard_normal((2, 8, 8)).astype(np.float32)
    a, b = Tensor(a_np, requires_grad=True), Tensor(b_np, requires_grad=True)
    cases = [("add", lambda: a + b, lambda: a_np + b_np), ("mul", lambda: a * b, lambda: a_np * b_np),
             ("exp", lambda: ops.exp(a), lambda: np.exp(a_np)), ("sum", lambda: a.sum(), lambda: a_np.sum()),
             ("matmul", lambda: a @ b, lambda: a_np @ b_np),
             ("relu", lambda: ops.relu(a), lambda: np.maximum(a_np, 0)),
             ("softmax", lambda: ops.softmax(a), lambda: np.exp(a_np) / np.exp(a_np).sum(-1, keepdims=True))]
    for name, ours, raw in cases:
        t_ours, t_raw = median_time(ours, number=2000), median_time(raw, number=2000)
        report(f"{name}: hpcai µs / numpy µs", t_ours * 1e6, f"numpy {t_raw * 1e6:.2f} µs, "
               f"overhead {(t_ours - t_raw) * 1e6:.2f} µs, ratio {t_ours / t_raw:.1f}")
    t_step = median_time(lambda: (a * b + a).sum().backward(), number=1000)
    report("(a*b + a).sum().backward(): µs", t_step * 1e6, "three nodes forward and backward")


def matmul(report=report, n: int = 1024) -> None:
    """Forward+backward of an n x n matmul against the three raw BLAS calls it needs."""
    print(f"matmul {n}x{n} float32 forward+backward (ms; goal: within 10% of raw numpy BLAS)")
    rng = np.random.default_rng(0)
    a_np, b_np, g_np = rng.standard_normal((3, n, n)).astype(np.float32)
    a, b = Tensor(a_np, requires_grad=True), Tensor(b_np, requires_grad=True)

    def ours():
        a.grad = b.grad = None
        (a @ b).backward(g_np)

    def raw():
        a_np @ b_np, g_np @ b_np.T, a_np.T @ g_np

    t_ours, t_raw = [], []
    for _ in range(7):  # interleaved, so drifts in clock speed hit both alike
        t_ours.append(median_time(ours, repeat=1))
        t_raw.append(median_time(raw, repeat=1))
    t_ours, t_raw = statistics.median(t_ours), statistics.median(t_raw)
    report("hpcai fwd+bwd ms", t_ours * 1e3, f"raw BLAS {t_raw * 1e3:.1f} ms, ratio {t_ours / t_raw:.3f}")


SECTIONS = {"overhead": overhead, "matmul": matmul}


def _optional_sections():
    import core_conv
    import core_precision
    return {"conv": core_conv.run, "precision": core_precision.run}


def main(argv) -> None:
    sections = {**SECTIONS, **_optional_sections()}
    chosen = argv or list(sections)
    unknown = [s for s in chosen if s not in sections]
    if unknown:
        raise SystemExit(f"sections: expected some of {list(sections)}, got {unknown}")
    print(f"numpy {np.__version__}; BLAS threads: {blas_threads()}")
    for name in chosen:
        sections[name](report)


if __name__ == "__main__":
    main(sys.argv[1:])
