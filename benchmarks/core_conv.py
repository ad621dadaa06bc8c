"""Convolution speed against PyTorch CPU: conv2d forward+backward in float32 (prints ratios; asserts nothing).

  python benchmarks/core_conv.py          # the three core shapes, about a minute on 2 cores
  python benchmarks/core_conv.py srcnn    # also the 64->32 and 32->1 5x5 layers of SRCNN (about 1 min more)

Shapes: the two layers of a small CNN (1x64x64 -> 16 -> 32 channels, batch 64) and SRCNN's first 9x9
layer (1x128x256, batch 8). Both frameworks get the same thread count and the same gradients (x and
weight require grad; bias on; the input layers are also timed without dL/dx, as in training); each
repeat times hpcai then torch (see ``run`` for how they are kept from disturbing each other), and the
medians are compared, so a drifting clock or a busy neighbour hits both alike. ``benchmarks/core.py`` calls
``run(report)``; torch rows are skipped when torch is not installed.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

if not __package__:  # run as a script from a checkout: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpcai import Tensor, ops  # noqa: E402
from hpcai.ops.threads import workers  # noqa: E402  (the threads hpcai's kernels use)

# (name, x shape, weight shape, padding)
SHAPES = [("cnn conv1 64x1x64x64 * 16x1x3x3", (64, 1, 64, 64), (16, 1, 3, 3), 1),
          ("cnn conv2 64x16x32x32 * 32x16x3x3", (64, 16, 32, 32), (32, 16, 3, 3), 1),
          ("srcnn conv1 8x1x128x256 * 64x1x9x9", (8, 1, 128, 256), (64, 1, 9, 9), 4)]
SRCNN = [("srcnn conv2 8x64x128x256 * 32x64x5x5", (8, 64, 128, 256), (32, 64, 5, 5), 2),
         ("srcnn conv3 8x32x128x256 * 1x32x5x5", (8, 32, 128, 256), (1, 32, 5, 5), 2)]


def _hpcai_step(x_np, w_np, b_np, g_np, padding, x_grad):
    x, w, b = (Tensor(a, requires_grad=r) for a, r in ((x_np, x_grad), (w_np, True), (b_np, True)))

    def step():
        x.grad = w.grad = b.grad = None
        ops.conv2d(x, w, b, padding=padding).backward(g_np)
    return step


def _torch_step(torch, x_np, w_np, b_np, g_np, padding, x_grad):
    x, w, b = (torch.tensor(a, requires_grad=r) for a, r in ((x_np, x_grad), (w_np, True), (b_np, True)))
    g = torch.from_numpy(g_np)

    def step():
        x.grad = w.grad = b.grad = None
        torch.nn.functional.conv2d(x, w, b, padding=padding).backward(g)
    return step


def run(report, repeats: int = 7, srcnn: bool = False, settle: float = 0.3) -> None:
    """Time each shape in both frameworks and ``report(name, value, note)`` ms and the ratio.

    Both share one process, so each would pay for the other's traces: after a call of one, the other's
    next call finds its freed memory returned to the OS (thousands of page faults, up to 2x slower here)
    and its worker threads (OpenBLAS, OpenMP) still spinning. So each timed call comes ``settle`` seconds
    and one untimed call after the other framework's, as in a training loop that runs one framework.
    """
    try:
        import torch
        torch.set_num_threads(workers())
    except ImportError:
        torch = None
    print(f"conv2d float32 forward+backward (ms; median of {repeats}; {workers()} threads; "
          f"ratio = hpcai / torch, goal <= 1.0)")
    rng = np.random.default_rng(0)
    for name, xs, ws, pad in SHAPES + (SRCNN if srcnn else []):
        x = rng.standard_normal(xs, dtype=np.float32)
        w = rng.standard_normal(ws, dtype=np.float32) * np.float32(1 / np.sqrt(np.prod(ws[1:])))
        b = rng.standard_normal(ws[0], dtype=np.float32)
        g = rng.standard_normal((xs[0], ws[0], xs[2] + 2 * pad - ws[2] + 1, xs[3] + 2 * pad - ws[3] + 1),
                                dtype=np.float32)
        for x_grad in (True, False) if xs[1] == 1 else (True,):  # an input layer trains without dL/dx
            cases = {"hpcai": _hpcai_step(x, w, b, g, pad, x_grad)}
            if torch is not None:
                cases["torch"] = _torch_step(torch, x, w, b, g, pad, x_grad)
            ms = _alternate(cases, repeats if xs[1] * ws[0] < 1024 else max(3, repeats // 2), settle)
            note = f"torch {ms['torch']:.1f} ms, ratio {ms['hpcai'] / ms['torch']:.2f}" if torch else "torch absent"
            report(f"{name}{'' if x_grad else ' (no dx)'} ms", ms["hpcai"], note)


def _alternate(cases, repeats, settle):
    """Median ms per case, the cases timed in turn, each after a pause and an untimed call of its own."""
    times = {k: [] for k in cases}
    for _ in range(repeats):
        for k, fn in cases.items():
            time.sleep(settle)
            fn()  # untimed: the other framework's frees return memory that this call must fault in again
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


if __name__ == "__main__":
    run(lambda name, value, note="": print(f"  {name:<44} {value:>10.2f}  {note}", flush=True),
        srcnn="srcnn" in sys.argv[1:])
