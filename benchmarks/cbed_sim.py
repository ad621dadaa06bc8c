"""CBED simulator speed: one 3 x 512 x 512 stack on one core, and data set generation on 1 and 2 processes.

  python benchmarks/cbed_sim.py            # about 30 s on 2 idle cores
  python benchmarks/cbed_sim.py --quick    # about 15 s (fewer crystals and materials)

1. Milliseconds per stack (three zone axes, 512 x 512, 100 kV, ZOLZ + FOLZ, no noise) for textbook
   crystals (Cu, Si, NaCl, Mg, rutile TiO2, from ASE) and random crystals of every crystal system (up to 96
   atoms in the cell), BLAS limited to one thread: the best of a few repeats per crystal, then the median
   and the slowest over crystals. Goal: <= 100 ms.
2. Data set generation (random crystal + stack + HDF5 write, the whole of ``generate_dataset``) of the same
   plan by 1 and by 2 worker processes (multiprocessing, one BLAS thread each). The workers import and warm
   up first, then start together at a barrier; the time is from that start until the last worker is done;
   the best of two interleaved rounds per case. Goal: 2 processes >= 1.8x one.

Each row: name, value, note. Timings are wall-clock; on a shared machine they are noisy, so the notes give
the CPU time and the load average at the start.
"""
from __future__ import annotations

import multiprocessing
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from _common import ONE_THREAD, blas_threads, report  # noqa: E402

from hpcai.sim import cbed  # noqa: E402

RANDOM_GROUPS = (1, 2, 14, 15, 62, 74, 88, 139, 148, 166, 176, 194, 221, 227)  # all seven crystal systems
PLAN_GROUPS = tuple(range(1, 231, 7))  # 33 groups across all systems


def textbook_crystals():
    """Cu, Si, NaCl, Mg, TiO2 (ASE builders), or [] without ase."""
    try:
        from ase.build import bulk
        from ase.spacegroup import crystal
    except ImportError:
        return []
    atoms = [bulk("Cu", "fcc", a=3.615, cubic=True), bulk("Si", "diamond", a=5.431, cubic=True),
             bulk("NaCl", "rocksalt", a=5.64, cubic=True), bulk("Mg", "hcp", a=3.21, c=5.21),
             crystal(["Ti", "O"], basis=[(0, 0, 0), (0.3049, 0.3049, 0)], spacegroup=136,
                     cellpar=[4.594, 4.594, 2.959, 90, 90, 90])]
    return [cbed.crystal_from_atoms(a) for a in atoms]


def stack_times(crystals, repeats: int) -> list:
    """(crystal, best wall s, its cpu s) per crystal, one BLAS thread."""
    from threadpoolctl import threadpool_limits
    rows = []
    with threadpool_limits(1):
        for crystal in crystals:
            cbed.simulate_stack(crystal)  # warm-up: caches, first-touch memory
            best = (np.inf, np.inf)
            for _ in range(repeats):
                wall, cpu = time.perf_counter(), time.process_time()
                cbed.simulate_stack(crystal)
                best = min(best, (time.perf_counter() - wall, time.process_time() - cpu))
            rows.append((crystal, *best))
    return rows


def per_stack(report=report, quick: bool = False) -> float:
    rng = np.random.default_rng(2019)
    crystals = textbook_crystals() + [cbed.random_crystal(g, rng) for g in RANDOM_GROUPS[::2 if quick else 1]]
    rows = stack_times(crystals, 2 if quick else 5)
    print("one 3 x 512 x 512 stack, 100 kV, one core (best of repeats per crystal)")
    for crystal, wall, cpu in rows:
        report(f"{crystal.formula} (SG {crystal.space_group}, {len(crystal.numbers)} atoms): ms", wall * 1e3,
               f"cpu {cpu * 1e3:.1f} ms")
    walls = [w for _, w, _ in rows]
    median = statistics.median(walls)
    report("median over crystals: ms per stack", median * 1e3,
           f"goal <= 100 ms; slowest {max(walls) * 1e3:.1f} ms; {len(rows)} crystals")
    return median


def _worker(items, folder, rank, size, barrier, results):
    from threadpoolctl import threadpool_limits
    with threadpool_limits(1):
        cbed.simulate_stack(cbed.random_crystal(225, 0))  # warm-up: imports, spglib tables
        barrier.wait()
        wall, cpu = time.perf_counter(), time.process_time()
        cbed.generate_dataset(items, folder, rank, size, samples_per_file=16)
        results.put((rank, wall, time.perf_counter(), time.process_time() - cpu))


def generate_with(processes: int, items, folder) -> tuple:
    """(wall s from the common start to the last worker's end, total worker cpu s)."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    saved = {k: os.environ.get(k) for k in ONE_THREAD}
    os.environ.update(ONE_THREAD)  # inherited by the spawned workers
    try:
        workers = [ctx.Process(target=_worker, args=(items, folder, r, processes, barrier, results))
                   for r in range(processes)]
        for w in workers:
            w.start()
        got = [results.get(timeout=900) for _ in workers]
        for w in workers:
            w.join()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if any(w.exitcode for w in workers):
        raise RuntimeError(f"a generation worker failed: exit codes {[w.exitcode for w in workers]}")
    start, end = min(g[1] for g in got), max(g[2] for g in got)
    return end - start, sum(g[3] for g in got)


def generation(report=report, quick: bool = False, rounds: int = 2) -> float:
    items = cbed.plan_materials(PLAN_GROUPS, per_group=1 if quick else 4, seed=1)
    print(f"data set generation: {len(items)} materials (random crystals of {len(PLAN_GROUPS)} groups), "
          f"3 x 512 x 512 float32 each, HDF5 in the ORNL layout; best of {rounds} interleaved rounds")
    best = {}
    for _ in range(rounds):  # interleaved, so that drifting machine load hits both cases alike
        for processes in (1, 2):
            with tempfile.TemporaryDirectory() as folder:
                wall, cpu = generate_with(processes, items, folder)
                written = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
                assert sum(cbed.check_file(p) for p in cbed.dataset_files(folder)) == len(items)
            best[processes] = min(best.get(processes, (np.inf,)), (wall, cpu, written))
    for processes, (wall, cpu, written) in best.items():
        report(f"{processes} process(es): samples / s", len(items) / wall,
               f"{wall:.2f} s wall, {cpu:.2f} s cpu in workers, {written / wall / 1e6:.0f} MB/s written")
    speedup = best[1][0] / best[2][0]
    report("speed-up, 2 processes over 1", speedup, "goal >= 1.8")
    return speedup


def run(report=report, quick: bool = False) -> None:
    """All sections (what ``hpcai`` benchmark runners call)."""
    per_stack(report, quick)
    generation(report, quick)


if __name__ == "__main__":
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"numpy {np.__version__}; BLAS threads {blas_threads()}; cpus {os.cpu_count()}; load average {load:.2f}")
    run(report, quick="--quick" in sys.argv[1:])
