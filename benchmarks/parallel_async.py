"""Asynchronous vs synchronous SGD with a straggler: seconds to a target loss (prints numbers; asserts nothing).

  python benchmarks/parallel_async.py            # about a minute on 2 cores; also benchmarks/parallel.py's "async"
  python benchmarks/parallel_async.py --ranks 2  # MPI methods on 2 ranks (ps: 1 worker), hogwild on 2 threads

Task: the digits MLP 64-64-10, minibatches of 32, each method given the same budget of gradient evaluations.
Async methods apply every gradient at lr 0.2; sync averages N gradients per step at lr 0.2 N (the linear
scaling rule, Goyal et al. 2017), so one sync step moves as far as N async updates. Methods on N = 4 ranks:
"sync" (allreduce), "ps" (parameter server: rank 0 serves, N - 1 workers), "rma" (one-sided windows, N
workers) and "hogwild" (N threads of one process). Each runs without and with a straggler: worker 1 (rank
1, or thread 1) sleeps once more its compute time every step, i.e. it is 2x slower. Reported: seconds until
the loss on the whole training set first falls to TARGET (from weight snapshots taken during the run), and
the final loss. The MPI methods run in a child ``mpiexec -n N`` launched from here (one BLAS thread each);
with more ranks than cores the ranks also compete for cores, which hurts blocking collectives most.
"""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from _common import mpi_run, print_result, report  # noqa: E402
from hpcai import datasets, nn  # noqa: E402
from hpcai.parallel.asynchronous import train_async  # noqa: E402

GRADIENTS, LR, BATCH, TARGET = 2400, 0.2, 32, 0.05
STRAGGLER = {1: 2.0}


def mlp():
    return nn.Sequential(nn.Linear(64, 64, rng=0), nn.ReLU(), nn.Linear(64, 10, rng=1))


def measure(method: str, delay, workers: int, comm=None) -> dict:
    """One run of ``method``: time to TARGET, final loss and staleness, as a JSON-able dict."""
    (x, y), _ = datasets.digits(flat=True)
    steps, lr = (GRADIENTS // workers, LR * workers) if method == "sync" else (GRADIENTS, LR)
    r = train_async(method, mlp, (x, y), lr=lr, steps=steps, batch_size=BATCH, comm=comm, threads=workers,
                    delay=delay, record_every=max(1, steps // 100))
    return {"method": method, "straggler": bool(delay), "time_to": r.time_to(TARGET), "final": r.final_loss,
            "wall": r.wall_time, "stale_mean": r.staleness_mean, "stale_max": r.staleness_max,
            "updates": {str(k): v for k, v in r.updates.items()}}


def child() -> None:
    """Inside ``mpiexec -n N``: measure the MPI methods; rank 0 prints the rows as JSON."""
    from hpcai.parallel.comm import world
    comm = world()
    rows = [measure(m, d, comm.size, comm) for d in (None, STRAGGLER) for m in ("sync", "ps", "rma")]
    if comm.rank == 0:
        print_result(rows)


def launch(ranks: int) -> list:
    """The MPI methods' rows, measured by this script's ``--child`` mode on ``ranks`` ranks."""
    return mpi_run(ranks, [os.path.abspath(__file__), "--child"], needed_by="parallel_async.py", timeout=900)


def run(report=report, ranks: int = 4) -> None:
    """Print time to TARGET and final loss per method, without and with a 2x straggler, then the verdict."""
    print(f"async SGD vs sync: digits MLP 64-64-10, {GRADIENTS} gradients of batch {BATCH}, {ranks} ranks "
          f"(ps: {ranks - 1} workers + server) or {ranks} threads, {os.cpu_count()} cores; seconds to training "
          f"loss <= {TARGET}")
    rows = [measure("hogwild", d, ranks) for d in (None, STRAGGLER)] + launch(ranks)
    for r in sorted(rows, key=lambda r: (r["straggler"], r["method"])):
        label = f"{'straggler 2x' if r['straggler'] else 'no straggler'}, {r['method']}: s to target"
        report(label, r["time_to"], f"final loss {r['final']:.4f} after {r['wall']:.2f} s; staleness mean "
               f"{r['stale_mean']:.2f} max {r['stale_max']}; updates per worker {r['updates']}")
    slow = {r["method"]: r["time_to"] for r in rows if r["straggler"]}
    best = min(("hogwild", "ps", "rma"), key=slow.get)
    ratio = slow[best] / slow["sync"]
    verdict = "async wins" if ratio < 1 else "sync wins"
    report("straggler: best async / sync time to target", ratio,
           f"{verdict} here ({best} {slow[best]:.2f} s vs sync {slow['sync']:.2f} s)")


if __name__ == "__main__":
    if "--child" in sys.argv[1:]:
        child()
    else:
        run(ranks=int(sys.argv[sys.argv.index("--ranks") + 1]) if "--ranks" in sys.argv else 4)
