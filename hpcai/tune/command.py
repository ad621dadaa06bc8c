"""``hpcai tune APP``: a study of an application from the command line, trials on groups of local MPI engines.

  hpcai tune digits --trials 20 --engines 4 --group 2 --metric test_accuracy \\
      --param lr=1e-4:1e-1:log --param optimizer=adam,sgd --param precision=* --set epochs=5

Each ``--param`` is a Config field searched (``LOW:HIGH[:log]``, ``A,B,...``, ``*``: all the field's choices),
each ``--set`` a field fixed for every trial. Finished trials are printed as they come; the study lives in
``--storage`` (run the same command again to resume it); the last line is the best trial as JSON.
"""
from __future__ import annotations

import json
import time

from .space import parse_param
from .study import PRUNERS, SAMPLERS

POLL = 0.5  # seconds between looks at the study while it runs


def add_parser(sub, apps: dict) -> None:
    """The ``tune`` subcommand on ``sub`` (an argparse subparsers object)."""
    t = sub.add_parser("tune", help="tune an application's Config with Optuna, trials on groups of MPI engines",
                       description=__doc__, formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    t.add_argument("app", choices=sorted(apps))
    t.add_argument("--trials", type=int, default=20, help="trials the study should hold (default 20)")
    t.add_argument("--engines", type=int, default=0, help="local MPI engines (0: trials in this process)")
    t.add_argument("--group", type=int, default=1, help="engines per trial (an MPI sub-communicator)")
    t.add_argument("--param", action="append", default=[], metavar="NAME=SPEC", help="a Config field to search")
    t.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a Config field fixed")
    t.add_argument("--metric", required=True, help="the Result metric to optimise (e.g. test_accuracy)")
    t.add_argument("--direction", default="maximize", choices=("maximize", "minimize"))
    t.add_argument("--pruner", default="median", choices=PRUNERS)
    t.add_argument("--sampler", default="tpe", choices=SAMPLERS)
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--storage", default=None, help="the study's journal file (default: results/tune/APP.journal)")
    t.add_argument("--name", default=None, help="the study's name in that file (default: the application's)")
    t.add_argument("--quiet", action="store_true")


def run(parser, args) -> int:
    """Run ``hpcai tune`` as parsed; bad input is a usage error naming the argument."""
    from ..apps import APPS, config_fields
    from .tuner import Tuner
    try:
        if not args.param:
            raise ValueError("--param: expected at least one Config field to search, e.g. --param lr=1e-4:1e-1:log")
        params = dict(parse_param(p) for p in args.param)
        specs = {s.name: s for s in config_fields(APPS[args.app].config)}
        fixed = {}
        for item in args.set:
            name, sep, text = item.partition("=")
            if not sep or name.strip() not in specs:
                raise ValueError(f"--set: expected FIELD=VALUE with a field of {args.app} ({sorted(specs)}), "
                                 f"got {item!r}")
            fixed[name.strip()] = specs[name.strip()].parse(text)
        if args.engines < 0:
            raise ValueError(f"--engines: expected a number of engines >= 0, got {args.engines}")
        tuner = Tuner(args.app, params, metric=args.metric, direction=args.direction, fixed=fixed,
                      engines=args.engines, group=args.group, storage=args.storage or f"results/tune/{args.app}.journal",
                      name=args.name, pruner=args.pruner, sampler=args.sampler, seed=args.seed)
        tuner.start(args.trials)
    except (ValueError, TypeError) as e:
        parser.exit(2, f"hpcai tune {args.app}: {e}\n")
    shown = {t["number"] for t in tuner.trials() if t["state"] not in ("RUNNING", "WAITING")}
    if not args.quiet and shown:
        print(f"resuming {tuner.storage}: {len(shown)} trials already finished", flush=True)
    while tuner.running or len(shown) < len(tuner.trials()):
        time.sleep(POLL if tuner.running else 0)
        for t in tuner.trials():
            if t["number"] not in shown and t["state"] not in ("RUNNING", "WAITING"):
                shown.add(t["number"])
                if not args.quiet:
                    print(tuner.summary_line(t), flush=True)
        if not tuner.running:
            break
    tuner.wait()
    if not args.quiet:
        print(tuner.summary().splitlines()[0], flush=True)
    print(json.dumps({"best_value": tuner.best_value, "best_params": tuner.best_params, "counts": tuner.counts(),
                      "storage": tuner.storage}))
    return 0
