"""The straggler study: asynchronous vs synchronous SGD with one worker slowed k x (prints numbers; asserts nothing).

  python benchmarks/parallel_async.py                   # both modes, 5 seeds; a few minutes on 2 cores
  python benchmarks/parallel_async.py simulated         # virtual time only (about a minute)
  python benchmarks/parallel_async.py measured --seeds 3

Task (:mod:`hpcai.parallel.straggler`): the digits MLP 64-64-10, minibatches of 32, 1200 gradients per run;
async methods apply every gradient at lr 0.2, sync averages N gradients per step at lr 0.2 N (the linear
scaling rule). Strategies sync, hogwild, ps (rank 0 serves, N - 1 workers) and rma; worker 1 slowed k = 1,
2, 4 x; every combination over several seeds, reported as mean +- std [min, max] of the time to training
loss <= TARGET and of the final test accuracy, then the conclusion those spreads support.

- ``simulated``: virtual time (a gradient costs 1 unit, k on the slowed worker), 4 workers; deterministic,
  independent of the machine's load.
- ``measured``: seconds, the real methods in a child ``mpiexec -n N`` with N = min(4, cores) ranks (never more
  ranks than cores; hogwild: N threads), worker 1 sleeping so it takes k times its compute time.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from _common import chosen_sections, mpi_run, print_result, report, section_parser  # noqa: E402
from hpcai.parallel import straggler  # noqa: E402

SECTIONS = ("simulated", "measured")
GRADIENTS, SEEDS, WORKERS = 1200, 5, 4


def ranks_here() -> int:
    """Ranks for the measured mode: at most 4, and never more than the cores."""
    return max(1, min(4, os.cpu_count() or 1))


def child(seeds: int, gradients: int) -> None:
    """Inside ``mpiexec -n N``: the measured study; rank 0 prints its trials as JSON."""
    from hpcai.parallel.comm import world
    comm = world()
    result = straggler.study("measured", seeds=seeds, gradients=gradients, comm=comm)
    if comm.rank == 0:
        print_result([dataclasses.asdict(t) for t in result.trials])


def measured(seeds: int = SEEDS, gradients: int = GRADIENTS, ranks: int | None = None) -> straggler.StudyResult:
    """The measured study, run in a child MPI launch of ``ranks`` (default :func:`ranks_here`) ranks."""
    ranks = ranks or ranks_here()
    rows = mpi_run(ranks, [os.path.abspath(__file__), "--child", "--seeds", str(seeds), "--gradients", str(gradients)],
                   needed_by="parallel_async.py", timeout=1800)
    trials = [straggler.Trial(**{k: float("inf") if v is None else v for k, v in t.items()}) for t in rows]
    return straggler.StudyResult("measured", straggler.TARGET, ranks, trials, "s")


def show(result, report=report) -> None:
    print(result.table())
    r = {(row["strategy"], row["slowdown"]): row for row in result.rows}
    for k in sorted({key[1] for key in r}):
        sync = r.get(("sync", k))
        fastest = min((r[s, k] for s in straggler.ASYNC if (s, k) in r), key=lambda row: row["time_mean"], default=None)
        if sync and fastest and fastest["time_mean"] > 0:
            report(f"{result.mode}, k={k:g}: sync / fastest async time to target",
                   sync["time_mean"] / fastest["time_mean"], f"fastest async: {fastest['strategy']}")
    print("conclusion: " + result.conclusion().replace("\n", "\n  "))


def run(report=report, sections=SECTIONS, seeds: int = SEEDS, gradients: int = GRADIENTS) -> None:
    """Print the study in each chosen mode: its table, the sync / async ratios and its conclusion."""
    if "simulated" in sections:
        print(f"straggler study in simulated time: {WORKERS} workers, {gradients} gradients per run, {seeds} seeds")
        show(straggler.study("simulated", seeds=seeds, gradients=gradients, workers=WORKERS), report)
    if "measured" in sections:
        print(f"straggler study in measured time: {ranks_here()} ranks on {os.cpu_count()} cores, {gradients} "
              f"gradients per run, {seeds} seeds")
        show(measured(seeds, gradients), report)


def main(argv=None) -> None:
    parser = section_parser(__doc__, SECTIONS)
    parser.add_argument("--seeds", type=int, default=SEEDS)
    parser.add_argument("--gradients", type=int, default=GRADIENTS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.seeds, args.gradients)
    run(report, chosen_sections(parser, args, SECTIONS), args.seeds, args.gradients)


if __name__ == "__main__":
    main()
