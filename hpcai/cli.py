"""The ``hpcai`` command. ``hpcai demo`` trains a small network end to end and prints the loss falling."""
from __future__ import annotations

import argparse
import sys

from . import amp, datasets, nn, optim
from .train import evaluate, fit


def demo(epochs: int = 20, hidden: int = 64, precision: str = "fp32", optimizer: str = "adam", lr: float = 3e-3,
         seed: int = 0, verbose: int = 1, out=None):
    """Train an MLP on interleaved spirals with ``fit`` in a precision policy; return (history, test accuracy)."""
    out = out or sys.stdout
    amp.get_policy(precision)  # fail early, naming the argument
    x, y = datasets.spirals(n=1200, classes=3, noise=0.15, turns=1.25, seed=seed)
    split = len(x) * 3 // 4
    model = nn.Sequential(nn.Linear(2, hidden, rng=seed), nn.ReLU(), nn.Linear(hidden, hidden, rng=seed + 1),
                          nn.ReLU(), nn.Linear(hidden, 3, rng=seed + 2))
    opt = optim.get_optimizer(optimizer, model.parameters(), lr=lr)
    print(f"hpcai demo: MLP 2-{hidden}-{hidden}-3 on {split} spiral points, precision {precision}, "
          f"optimizer {optimizer}", file=out)
    history = fit(model, (x[:split], y[:split]), "cross_entropy", opt, epochs=epochs, batch_size=32,
                  metrics=["accuracy"], verbose=verbose, seed=seed, precision=precision)
    result = evaluate(model, (x[split:], y[split:]), "cross_entropy", metrics=["accuracy"], precision=precision)
    print(f"held-out accuracy {result['accuracy']:.3f}; training loss {history['loss'][0]:.3f} -> "
          f"{history['loss'][-1]:.3f}", file=out)
    return history, result["accuracy"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="hpcai", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="train a small MLP end to end and print the loss falling")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--precision", default="fp32", choices=list(amp.POLICIES),
                   help="precision policy (fp16/bf16 emulate tensor cores on the CPU)")
    p.add_argument("--optimizer", default="adam", choices=list(optim.OPTIMIZERS))
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "demo":
        history, _ = demo(args.epochs, args.hidden, args.precision, args.optimizer, args.lr, args.seed, verbose=1)
        return 0 if history["loss"][-1] < history["loss"][0] else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
