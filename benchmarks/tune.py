"""Hyperparameter search on MPI engines: trial scheduling, overhead per trial, and tuning digits (prints numbers).

  python benchmarks/tune.py              # every section, about 4 minutes on 2 cores
  python benchmarks/tune.py --quick      # scheduling and overhead only: about 1 minute
  python benchmarks/tune.py digits       # chosen sections (schedule, overhead, digits)

Sections, each measured in this run:

- ``schedule``: trials per minute with 1, 2 and 4 groups of 4 local engines (groups of 4, 2 and 1 ranks), each
  trial sleeping ``--nap`` seconds on every rank of its group while reporting 10 intermediate values, so the
  numbers measure the scheduling (asks, reports, tells, the group's broadcasts), not the 2 cores' arithmetic.
  Parallel efficiency = rate(g) / (g * rate(1)); 1 means the groups never wait for the study.
- ``overhead``: the same small digits run (2 epochs) as trials of a Tuner on a group of 2 engines, and called
  directly with ``run_app`` on the same 2 engines; overhead per trial = the difference of the mean times
  (goal <= 1 s). Also in this process (engines=0) against ``run_app(engines=0)``.
- ``digits``: tune digits (lr, optimizer, precision, hidden width; 20 epochs) for 20 trials on 4 engines in
  groups of 2 with the median pruner, against the defaults on 2 engines. The study's metric is the test
  accuracy of the split it was tuned on, so the best configuration and the defaults are then both run on
  three fresh splits (seeds 1-3) the study never saw.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

from _common import report

SECTIONS = ("schedule", "overhead", "digits")
SMALL = {"epochs": 2, "hidden": 32}


def nap(params, ctx):
    """A trial that sleeps ``params["nap"]`` seconds in 10 reports (only scheduling costs anything)."""
    import time
    for step in range(1, 11):
        time.sleep(params["nap"] / 10)
        ctx.report(float(step), step * 10)
    return params["nap"]


def schedule(engines, folder, nap_seconds, per_group):
    from hpcai.tune import Tuner
    print(f"schedule: trials of {nap_seconds:g} s (sleeping, 10 reports each) on 4 engines, {per_group} per group")
    rates = {}
    Tuner(nap, {"nap": [0.0]}, engines=engines, pruner="none", storage=os.path.join(folder, "warm.journal"),
          path=os.path.dirname(__file__)).run(4)  # warm: the engines' first imports and communicators
    for groups in (1, 2, 4):
        tuner = Tuner(nap, {"nap": [nap_seconds]}, engines=engines, group=4 // groups, pruner="none",
                      storage=os.path.join(folder, f"nap{groups}.journal"), path=os.path.dirname(__file__))
        start = time.perf_counter()
        tuner.run(per_group * groups)
        seconds = time.perf_counter() - start
        rates[groups] = per_group * groups / seconds * 60
        report(f"trials per minute, {groups} group(s) of {4 // groups}", rates[groups],
               f"{per_group * groups} trials in {seconds:.1f} s (ideal {60 / nap_seconds * groups:.0f}/min)")
    for groups in (2, 4):
        report(f"parallel efficiency, {groups} groups", rates[groups] / (groups * rates[1]), "rate(g) / (g * rate(1))")


def overhead(folder, trials):
    from hpcai.cluster import Engines
    from hpcai.runner import run_app
    from hpcai.tune import Tuner
    print(f"overhead: digits {SMALL} as {trials} Tuner trials vs {trials} run_app calls, the same config")
    for where in (2, 0):
        with (Engines(2) if where else _nothing()) as engines:
            target = engines if where else 0
            run_app("digits", SMALL, engines=target, verbose=0)  # warm: imports, data set
            direct = []
            for _ in range(trials):
                start = time.perf_counter()
                run_app("digits", SMALL, engines=target, verbose=0)
                direct.append(time.perf_counter() - start)
            tuner = Tuner("digits", {"seed": [0]}, metric="test_accuracy", fixed=SMALL, engines=target,
                          group=2 if where else 1, pruner="none", storage=os.path.join(folder, f"over{where}.journal"))
            start = time.perf_counter()
            tuner.run(trials)
            tuned = (time.perf_counter() - start) / trials
            label = "2 engines, group of 2" if where else "in this process"
            report(f"run_app s per run ({label})", statistics.mean(direct), f"median {statistics.median(direct):.2f}")
            report(f"Tuner s per trial ({label})", tuned, "start and end of the study included")
            report(f"overhead s per trial ({label})", tuned - statistics.mean(direct), "goal <= 1 s")


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def digits(folder, trials):
    from hpcai.cluster import Engines
    from hpcai.runner import run_app
    from hpcai.tune import Tuner
    space = {"lr": (1e-4, 3e-2, "log"), "optimizer": ["adam", "adamw", "rmsprop", "sgd", "momentum", "lamb"],
             "precision": ["fp32", "mixed-fp16", "mixed-bf16"], "hidden": (32, 256, "log")}
    print(f"digits: {trials} trials over {sorted(space)} on 4 engines in groups of 2 (TPE, median pruner)")
    start = time.perf_counter()
    tuner = Tuner("digits", space, metric="test_accuracy", engines=4, group=2, seed=0,
                  storage=os.path.join(folder, "digits.journal")).run(trials)
    c = tuner.counts()
    report("study seconds", time.perf_counter() - start,
           f"{c['COMPLETE']} complete, {c['PRUNED']} pruned, {c['FAIL']} failed")
    best = tuner.best_config()
    with Engines(2) as engines:  # the defaults and the best on 2 ranks, as every trial ran
        default = run_app("digits", engines=engines, verbose=0).metrics["test_accuracy"]
        report("test accuracy, defaults (seed 0 split)", default, "adam, lr 3e-3, fp32, hidden 128")
        report("test accuracy, best trial (seed 0 split)", tuner.best_value, str(tuner.best_params))
        fresh = {"defaults": [], "best": []}
        for seed in (1, 2, 3):
            fresh["defaults"].append(run_app("digits", {"seed": seed}, engines=engines, verbose=0)
                                     .metrics["test_accuracy"])
            fresh["best"].append(run_app("digits", {**vars(best), "seed": seed}, engines=engines, verbose=0)
                                 .metrics["test_accuracy"])
    for name, values in fresh.items():
        report(f"test accuracy, {name}, fresh splits (mean of 3)", statistics.mean(values),
               " ".join(f"{v:.4f}" for v in values))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sections", nargs="*", choices=[[], *SECTIONS], default=[])
    parser.add_argument("--quick", action="store_true", help="schedule and overhead only, fewer trials")
    parser.add_argument("--nap", type=float, default=0.5, help="seconds a scheduling trial sleeps")
    args = parser.parse_args(argv)
    sections = args.sections or (SECTIONS[:2] if args.quick else SECTIONS)
    from hpcai.cluster import Engines
    with tempfile.TemporaryDirectory() as folder:
        if "overhead" in sections:
            overhead(folder, 4 if args.quick else 8)
        if "schedule" in sections:
            with Engines(4) as engines:
                schedule(engines, folder, args.nap, 4 if args.quick else 8)
        if "digits" in sections:
            digits(folder, 20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
