"""The ``hpcai`` command.

  hpcai run climate_sr --engines 2        # the application on 2 local MPI engines (ipyparallel)
  hpcai run climate_sr --days 2 --ratio 50 --output results/
  mpiexec -n 4 python -m hpcai run climate_sr   # a batch job: every rank runs its part
  hpcai demo                               # a small MLP trained end to end with the core

Every field of an application's Config is an option (``--days``, ``--precision``, ...), read from the
dataclass, so a new field or application needs no change here.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
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


def _config_options(parser, config_cls) -> None:
    """One ``--name`` option per Config field, typed from its default."""
    for f in dataclasses.fields(config_cls):
        default, annotation = f.default, str(f.type)
        kind = next((t for t in (int, float) if annotation.split(" |")[0] == t.__name__), str)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=None)
        else:
            parser.add_argument(flag, type=kind, default=None, help=f"(default: {default})")


def run_app(name: str, overrides: dict, engines: int = 0, verbose: int = 1):
    """Run application ``name`` here (engines=0), on local MPI engines (engines=N), or as this MPI job's part."""
    from .apps import APPS
    from .parallel import world
    app = APPS[name]
    config = dataclasses.replace(app.config(), **overrides).validate()
    comm = world() if "OMPI_COMM_WORLD_SIZE" in os.environ or "PMI_SIZE" in os.environ else None
    if comm is not None and comm.size > 1:  # launched by mpiexec: this process is one rank of the job
        return app.run(config, verbose=verbose if comm.rank == 0 else 0, comm=comm)
    if engines <= 0:
        return app.run(config, verbose=verbose)
    from .cluster import Engines
    with Engines(n=engines) as cluster:
        results = cluster.run_sync(_run_on_engine, name, dataclasses.asdict(config), verbose)
    return results[0]


def _run_on_engine(name, config, verbose):
    """Engine side of :func:`run_app`: every rank runs the app on MPI's world communicator."""
    import dataclasses as dc
    from hpcai.apps import APPS
    from hpcai.parallel import world
    comm = world()
    app = APPS[name]
    return app.run(dc.replace(app.config(), **config), verbose=verbose if comm.rank == 0 else 0, comm=comm)


def main(argv=None) -> int:
    from .apps import APPS
    parser = argparse.ArgumentParser(prog="hpcai", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="train a small MLP end to end and print the loss falling")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--precision", default="fp32", choices=list(amp.POLICIES),
                   help="precision policy (fp16/bf16 emulate tensor cores on the CPU)")
    p.add_argument("--optimizer", default="adam", choices=list(optim.OPTIMIZERS))
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("run", help="run an application headless; writes its results and figures")
    apps = r.add_subparsers(dest="app", required=True)
    for name, app in APPS.items():
        a = apps.add_parser(name, help=app.description)
        a.add_argument("--engines", type=int, default=0,
                       help="start this many local MPI engines (ipyparallel) and run there; 0: in this process")
        a.add_argument("--quiet", action="store_true")
        _config_options(a, app.config)
    args = parser.parse_args(argv)
    if args.command == "demo":
        history, _ = demo(args.epochs, args.hidden, args.precision, args.optimizer, args.lr, args.seed, verbose=1)
        return 0 if history["loss"][-1] < history["loss"][0] else 1
    fields = {f.name for f in dataclasses.fields(APPS[args.app].config)}
    overrides = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    if "output_dir" in fields and "output_dir" not in overrides:
        overrides["output_dir"] = os.path.join("results", args.app)
    try:
        result = run_app(args.app, overrides, engines=args.engines, verbose=0 if args.quiet else 1)
    except (ValueError, TypeError) as e:
        parser.exit(2, f"hpcai run {args.app}: {e}\n")
    print(json.dumps({"metrics": result.metrics, "figures": result.figures, "files": result.files}, indent=2,
                     default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
