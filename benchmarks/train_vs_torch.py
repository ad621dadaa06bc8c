"""Training-step time of hpcai against PyTorch CPU, same models, same thread count (prints ratios).

  python benchmarks/train_vs_torch.py                 # all four cases, a few minutes on 2 cores
  python benchmarks/train_vs_torch.py mlp cnn --rounds 5
  python benchmarks/train_vs_torch.py --threads 1 --clock cpu   # on a busy machine: CPU time, one thread each
  python benchmarks/train_vs_torch.py --baseline ../old   # also the hpcai of another checkout, alternating

Each measurement runs in its own process, alternating hpcai and PyTorch, so the two frameworks' idle
worker threads never spin against each other (on 2 cores that alone costs 1.6-1.9x). One step is
forward + backward + an SGD-momentum update; the number reported is the median step time over rounds.
Each case also prints its achieved fraction of the fp32 GEMM peak: the case's multiply-add work (forward,
weight gradients, input gradients below the first layer; 2 FLOPs each) over its step time, against numpy's
product of two 2048x2048 float32 matrices timed in the same run (in a process of its own before each
case; the best so far is the peak). ``--layers`` adds hpcai's GFLOP/s per convolution layer, forward,
backward-data (dL/dx) and backward-weight (dL/dw) timed apart. ``--baseline DIR`` times the hpcai package
in checkout DIR as a third process in each round (before/after a change, under the same load). The
goals: hpcai/torch <= 0.8 in every case, and >= 60 % of the GEMM peak on the convolution cases. Cases:
(a) MLP 784-512-256-10, batch 256; (b) CNN conv3x3(16)-relu-pool-conv3x3(32)-relu-pool-linear(10) on
1x64x64, batch 64; (c) CBED-like CNN on 3x128x128 (32-64-128 channels, global pool, 230 classes), batch 32;
(d) SRCNN 9-5-5 (64, 32, 1 channels) on 1x128x256, batch 8.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name: (input shape per sample, batch, target kind, layer list); layers are (kind, args) in both frameworks
CASES = {
    "mlp": ((784,), 256, ("classes", 10),
            [("linear", 784, 512), ("relu",), ("linear", 512, 256), ("relu",), ("linear", 256, 10)]),
    "cnn": ((1, 64, 64), 64, ("classes", 10),
            [("conv", 1, 16, 3, 1), ("relu",), ("maxpool", 2), ("conv", 16, 32, 3, 1), ("relu",), ("maxpool", 2),
             ("flatten",), ("linear", 32 * 16 * 16, 10)]),
    "cbed": ((3, 128, 128), 32, ("classes", 230),
             [("conv", 3, 32, 3, 1), ("relu",), ("maxpool", 2), ("conv", 32, 64, 3, 1), ("relu",), ("maxpool", 2),
              ("conv", 64, 128, 3, 1), ("relu",), ("gap",), ("linear", 128, 230)]),
    "srcnn": ((1, 128, 256), 8, ("image", None),
              [("conv", 1, 64, 9, 4), ("relu",), ("conv", 64, 32, 5, 2), ("relu",), ("conv", 32, 1, 5, 2)]),
}


def build_hpcai(layers):
    from hpcai import nn
    make = {"linear": lambda i, o: nn.Linear(i, o, rng=0), "relu": nn.ReLU, "maxpool": nn.MaxPool2d,
            "conv": lambda i, o, k, p: nn.Conv2d(i, o, k, padding=p, rng=0), "flatten": nn.Flatten,
            "gap": nn.GlobalAvgPool2d}
    return nn.Sequential(*[make[kind](*args) for kind, *args in layers])


def build_torch(layers):
    import torch
    make = {"linear": torch.nn.Linear, "relu": torch.nn.ReLU, "maxpool": torch.nn.MaxPool2d,
            "conv": lambda i, o, k, p: torch.nn.Conv2d(i, o, k, padding=p), "flatten": torch.nn.Flatten,
            "gap": lambda: torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())}
    return torch.nn.Sequential(*[make[kind](*args) for kind, *args in layers])


def _shapes(case):
    """[(layer, input shape)] of a case, batch included, walking its layers."""
    shape, batch, _, layers = CASES[case]
    cur, out = (batch, *shape), []
    for layer in layers:
        out.append((layer, cur))
        kind, *args = layer
        if kind == "conv":
            cur = (cur[0], args[1], cur[2] + 2 * args[3] - args[2] + 1, cur[3] + 2 * args[3] - args[2] + 1)
        elif kind == "maxpool":
            cur = (*cur[:2], cur[2] // args[0], cur[3] // args[0])
        elif kind == "linear":
            cur = (*cur[:-1], args[1])
        elif kind == "flatten":
            cur = (cur[0], int(np.prod(cur[1:])))
        elif kind == "gap":
            cur = cur[:2]
    return out


def _flops(layer, shape):
    """Floating-point operations (2 per multiply-add) of one pass of a conv or linear layer (0 for others)."""
    kind, *args = layer
    if kind == "conv":
        c, o, k, p = args
        return 2 * shape[0] * o * c * k * k * (shape[2] + 2 * p - k + 1) * (shape[3] + 2 * p - k + 1)
    if kind == "linear":
        return 2 * int(np.prod(shape[:-1])) * args[0] * args[1]
    return 0


def step_flops(case):
    """FLOPs of one training step: forward, weight gradient, and input gradient except for the first layer."""
    return sum(_flops(layer, shape) * (2 if i == 0 else 3) for i, (layer, shape) in enumerate(_shapes(case)))


def _clock(kind: str):
    """The timer of ``--clock``: wall time, or the process's CPU time (all its threads; with one thread
    each, a comparison that other processes on a busy machine disturb far less)."""
    return time.process_time if kind == "cpu" else time.perf_counter


def gemm_rate(n: int = 2048, repeats: int = 5, clock=time.perf_counter) -> float:
    """numpy's float32 GEMM speed (FLOP/s, best of ``repeats``) on n×n matrices, all of BLAS's threads."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    c = a @ b
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        np.matmul(a, b, out=c)
        best = min(best, clock() - start)
    return 2 * n ** 3 / best


def layer_rates(case: str, repeats: int = 3, clock=time.perf_counter) -> list:
    """hpcai's [(name, forward, backward-data, backward-weight FLOP/s)] for each conv layer of ``case``."""
    import hpcai
    from hpcai import ops
    rng, out = np.random.default_rng(0), []
    for i, (layer, shape) in enumerate(_shapes(case)):
        if layer[0] != "conv":
            continue
        c, o, k, p = layer[1:]
        x = hpcai.tensor(rng.standard_normal(shape, dtype=np.float32), requires_grad=True)
        w = hpcai.tensor(rng.standard_normal((o, c, k, k), dtype=np.float32) / np.float32(k * np.sqrt(c)),
                         requires_grad=True)
        b = hpcai.tensor(np.zeros(o, np.float32), requires_grad=True)
        node = ops.conv2d(x, w, b, padding=p)._ctx
        gy = rng.standard_normal((shape[0], o, *node.out_hw), dtype=np.float32)

        def timed(fn):
            fn()
            times = []
            for _ in range(repeats):
                start = clock()
                fn()
                times.append(clock() - start)
            return _flops(layer, shape) / statistics.median(times)

        def grad(which):
            node.needs_input_grad = tuple(j == which for j in range(3))
            return lambda: node.backward(gy)

        rates = [timed(lambda: node.forward(x.data, w.data, b.data)), timed(grad(0)), timed(grad(1))]
        out.append((f"conv{len(out) + 1} {c}->{o} {k}x{k} on {shape[1]}x{shape[2]}x{shape[3]}"
                    f"{'' if i else ' (no dx in training)'}", *rates))
    return out


def worker(framework: str, case: str, steps: int, threads: int, clock=time.perf_counter) -> float:
    """Median seconds per training step of ``case`` in ``framework`` (run in a fresh process)."""
    shape, batch, (target_kind, classes), layers = CASES[case]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *shape)).astype(np.float32)
    y = rng.integers(0, classes, batch) if target_kind == "classes" else rng.standard_normal((batch, *shape)).astype(
        np.float32)
    if framework == "torch":
        import torch
        torch.set_num_threads(threads)
        model = build_torch(layers)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        loss_fn = torch.nn.functional.cross_entropy if target_kind == "classes" else torch.nn.functional.mse_loss

        def step():
            opt.zero_grad()
            loss_fn(model(xt), yt).backward()
            opt.step()
    else:
        import hpcai
        from hpcai import ops, optim
        model = build_hpcai(layers)
        opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        xt = hpcai.tensor(x)
        loss_fn = ops.cross_entropy if target_kind == "classes" else ops.mse_loss

        def step():
            opt.zero_grad()
            loss_fn(model(xt), y if target_kind == "classes" else hpcai.tensor(y)).backward()
            opt.step()
    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        start = clock()
        step()
        times.append(clock() - start)
    return statistics.median(times)


def measure(framework: str, case: str, steps: int, threads: int, clock: str = "wall", root: str = ROOT):
    """The worker's answer (seconds per step; FLOP/s for "gemm"; rates for "layers"), from a fresh process
    whose BLAS and OpenMP use ``threads`` threads (hpcai follows BLAS's setting), importing hpcai from the
    checkout ``root``."""
    env = dict(os.environ, **{k: str(threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
    out = subprocess.run([sys.executable, __file__, "--worker", framework, "--steps", str(steps), "--threads",
                          str(threads), "--clock", clock, "--root", root, case], capture_output=True, text=True,
                         cwd=ROOT, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])["result"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", default=list(CASES), help=f"some of {list(CASES)}")
    parser.add_argument("--rounds", type=int, default=3, help="alternating process pairs per case")
    parser.add_argument("--steps", type=int, default=0, help="timed steps per process (default: by case)")
    parser.add_argument("--layers", action="store_true", help="also hpcai's GFLOP/s per conv layer and pass")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of each framework (all cores)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall time, or process CPU time (use with --threads 1 on a busy machine)")
    parser.add_argument("--baseline", metavar="DIR", help="also time the hpcai package of checkout DIR")
    parser.add_argument("--worker", choices=["hpcai", "torch", "gemm", "layers"], help=argparse.SUPPRESS)
    parser.add_argument("--root", default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args()
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        parser.error(f"cases: expected some of {list(CASES)}, got {unknown}")
    if args.baseline and not os.path.isdir(os.path.join(args.baseline, "hpcai")):
        parser.error(f"--baseline: {args.baseline!r} holds no hpcai package")
    if args.worker:
        sys.path.insert(0, args.root)
        clock = _clock(args.clock)
        jobs = {"gemm": lambda: gemm_rate(clock=clock), "layers": lambda: layer_rates(args.cases[0], clock=clock),
                "hpcai": lambda: worker("hpcai", args.cases[0], args.steps or 5, args.threads, clock),
                "torch": lambda: worker("torch", args.cases[0], args.steps or 5, args.threads, clock)}
        print(json.dumps({"result": jobs[args.worker]()}))
        return
    if importlib.util.find_spec("torch") is None:
        raise SystemExit("this benchmark compares with PyTorch: pip install torch")
    print(f"training step (forward + backward + SGD momentum), {args.threads} threads each, "
          f"median over {args.rounds} alternating process pairs, {args.clock} time")
    print("  GEMM %: the step's FLOPs per second over the fp32 GEMM peak measured alongside (numpy, 2048^3)")
    base = f"{'base ms':>9}{'base/torch':>12}" if args.baseline else ""
    print(f"  {'case':<8}{'GFLOP':>8}{'hpcai ms':>10}{'torch ms':>10}{'hpcai/torch':>13}{'hpcai GEMM %':>14}"
          f"{'torch GEMM %':>14}{base}")
    peaks, layers = [], {}
    for case in args.cases:
        steps = args.steps or {"mlp": 50, "cnn": 10, "cbed": 3, "srcnn": 2}[case]
        ours, theirs, before = [], [], []
        peaks.append(measure("gemm", case, 0, args.threads, args.clock))
        for _ in range(args.rounds):
            ours.append(measure("hpcai", case, steps, args.threads, args.clock))
            theirs.append(measure("torch", case, steps, args.threads, args.clock))
            if args.baseline:
                before.append(measure("hpcai", case, steps, args.threads, args.clock, args.baseline))
        o, t, peak, flops = statistics.median(ours), statistics.median(theirs), max(peaks), step_flops(case)
        b = statistics.median(before) if before else None
        base = f"{b * 1e3:>9.1f}{b / t:>12.2f}" if before else ""
        print(f"  {case:<8}{flops / 1e9:>8.2f}{o * 1e3:>10.1f}{t * 1e3:>10.1f}{o / t:>13.2f}"
              f"{100 * flops / o / peak:>13.0f}%{100 * flops / t / peak:>13.0f}%{base}", flush=True)
        print(f"  {'':<8}per round hpcai/torch {' '.join(f'{a / c:.2f}' for a, c in zip(ours, theirs))}"
              + (f"; baseline/torch {' '.join(f'{a / c:.2f}' for a, c in zip(before, theirs))}" if before else ""),
              flush=True)
        if args.layers and any(layer[0] == "conv" for layer in CASES[case][3]):
            layers[case] = measure("layers", case, 0, args.threads, args.clock)
    print(f"  fp32 GEMM peak: {max(peaks) / 1e9:.0f} GFLOP/s (best of {len(peaks)} runs; "
          f"median {statistics.median(peaks) / 1e9:.0f})")
    if layers:
        width = max(len(f"{case} {row[0]}") for case, rows in layers.items() for row in rows) + 2
        print(f"hpcai conv layers, GFLOP/s (% of the peak)\n  {'':<{width}}{'forward':>17}{'backward-data':>17}"
              f"{'backward-weight':>17}")
        for case, rows in layers.items():
            for name, *rates in rows:
                cells = "".join(f"{r / 1e9:>10.1f} ({100 * r / max(peaks):>3.0f}%)" for r in rates)
                print(f"  {case + ' ' + name:<{width}}{cells}")


if __name__ == "__main__":
    main()
