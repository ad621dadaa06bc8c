"""The ``hpcai`` command. ``hpcai demo`` trains a small network with the core and prints the loss falling."""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from . import ops, precision
from .autograd import Tensor, no_grad


def spirals(n_per_class: int, classes: int, rng: np.random.Generator):
    """Interleaved 2-d spirals, one per class: a small problem no linear model can solve."""
    t = rng.uniform(0.25, 1.0, (classes, n_per_class))
    angle = 7.0 * t + 2 * np.pi * np.arange(classes)[:, None] / classes + rng.normal(0, 0.15, t.shape)
    x = np.stack([t * np.cos(angle), t * np.sin(angle)], axis=-1).reshape(-1, 2)
    y = np.repeat(np.arange(classes), n_per_class)
    return x.astype(np.float32), y


def demo(epochs: int = 30, hidden: int = 64, matmul_precision: str = "fp32", seed: int = 0, out=sys.stdout):
    """Train a 2-layer MLP on spirals with momentum SGD, computing every product in ``matmul_precision``.

    Returns the list of per-epoch mean losses and the final training accuracy.
    """
    precision.MATMUL_MODES[matmul_precision]  # noqa: B018 - fail early on an unknown name
    rng = np.random.default_rng(seed)
    x, y = spirals(300, 3, rng)
    params = [Tensor(rng.normal(0, np.sqrt(2 / 2), (2, hidden)).astype(np.float32), requires_grad=True),
              Tensor(np.zeros(hidden, np.float32), requires_grad=True),
              Tensor(rng.normal(0, np.sqrt(1 / hidden), (hidden, 3)).astype(np.float32), requires_grad=True),
              Tensor(np.zeros(3, np.float32), requires_grad=True)]
    velocity = [np.zeros_like(p.data) for p in params]
    lr, momentum, batch = 0.2, 0.9, 64

    def forward(xb):
        w1, b1, w2, b2 = params
        h = ops.relu(ops.matmul(xb, w1, precision=matmul_precision) + b1)
        return ops.matmul(h, w2, precision=matmul_precision) + b2

    print(f"hpcai demo: 2-layer MLP (hidden {hidden}) on {len(x)} spiral points, 3 classes, "
          f"matmul precision {matmul_precision}", file=out)
    losses = []
    for epoch in range(1, epochs + 1):
        start, order, total = time.perf_counter(), rng.permutation(len(x)), 0.0
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            logp = ops.log_softmax(forward(Tensor(x[idx])), axis=1)
            loss = -ops.mean(ops.gather(logp, y[idx, None], axis=1))
            for p in params:
                p.grad = None
            loss.backward()
            for p, v in zip(params, velocity):
                v *= momentum
                v -= lr * p.grad
                p.data += v
            total += loss.item() * len(idx)
        losses.append(total / len(x))
        if epoch == 1 or epoch % 5 == 0 or epoch == epochs:
            print(f"epoch {epoch:3d}  loss {losses[-1]:.4f}  ({(time.perf_counter() - start) * 1e3:.0f} ms)", file=out)
    with no_grad():
        accuracy = float((forward(Tensor(x)).numpy().argmax(axis=1) == y).mean())
    print(f"training accuracy {accuracy:.3f}; loss {losses[0]:.3f} -> {losses[-1]:.3f}", file=out)
    return losses, accuracy


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="hpcai", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="train a small MLP with the core engine and print the loss falling")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--precision", default="fp32", choices=list(precision.MATMUL_MODES),
                   help="how every matrix product is computed (tensor-core emulation for fp16/bf16)")
    p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "demo":
        losses, _ = demo(args.epochs, args.hidden, args.precision, args.seed)
        return 0 if losses[-1] < losses[0] else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
