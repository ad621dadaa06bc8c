"""Training-step time of hpcai against PyTorch CPU, same models, same thread count (prints ratios).

  python benchmarks/train_vs_torch.py                 # all four cases, a few minutes on 2 cores
  python benchmarks/train_vs_torch.py mlp cnn --rounds 5

Each measurement runs in its own process, alternating hpcai and PyTorch, so the two frameworks' idle
worker threads never spin against each other (on 2 cores that alone costs 1.6-1.9x). One step is
forward + backward + an SGD-momentum update; the number reported is the median step time over rounds.
Cases: (a) MLP 784-512-256-10, batch 256; (b) CNN conv3x3(16)-relu-pool-conv3x3(32)-relu-pool-linear(10)
on 1x64x64, batch 64; (c) CBED-like CNN on 3x128x128 (32-64-128 channels, global pool, 230 classes),
batch 32; (d) SRCNN 9-5-5 (64, 32, 1 channels) on 1x128x256, batch 8.
"""
from __future__ import annotations

import argparse
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


def worker(framework: str, case: str, steps: int) -> float:
    """Median seconds per training step of ``case`` in ``framework`` (run in a fresh process)."""
    shape, batch, (target_kind, classes), layers = CASES[case]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *shape)).astype(np.float32)
    y = rng.integers(0, classes, batch) if target_kind == "classes" else rng.standard_normal((batch, *shape)).astype(
        np.float32)
    if framework == "torch":
        import torch
        torch.set_num_threads(os.cpu_count())
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
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(framework: str, case: str, steps: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--worker", framework, "--steps", str(steps), case],
                         capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", default=list(CASES), help=f"some of {list(CASES)}")
    parser.add_argument("--rounds", type=int, default=3, help="alternating process pairs per case")
    parser.add_argument("--steps", type=int, default=0, help="timed steps per process (default: by case)")
    parser.add_argument("--worker", choices=["hpcai", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        parser.error(f"cases: expected some of {list(CASES)}, got {unknown}")
    if args.worker:
        sys.path.insert(0, ROOT)
        print(json.dumps({"seconds": worker(args.worker, args.cases[0], args.steps or 5)}))
        return
    try:
        import torch  # noqa: F401
    except ImportError:
        raise SystemExit("this benchmark compares with PyTorch: pip install torch") from None
    print(f"training step (forward + backward + SGD momentum), {os.cpu_count()} threads each, "
          f"median over {args.rounds} alternating process pairs")
    print(f"  {'case':<8}{'hpcai ms':>10}{'torch ms':>10}{'hpcai/torch':>13}")
    for case in args.cases:
        steps = args.steps or {"mlp": 50, "cnn": 10, "cbed": 3, "srcnn": 2}[case]
        ours, theirs = [], []
        for _ in range(args.rounds):
            ours.append(measure("hpcai", case, steps))
            theirs.append(measure("torch", case, steps))
        o, t = statistics.median(ours), statistics.median(theirs)
        print(f"  {case:<8}{o * 1e3:>10.1f}{t * 1e3:>10.1f}{o / t:>13.2f}", flush=True)


if __name__ == "__main__":
    main()
