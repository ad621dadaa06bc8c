"""The alloy surrogate: its speed against the reference it replaces, active against random learning, T_c.

  python benchmarks/alloy.py            # about 6-8 minutes on 2 idle cores
  python benchmarks/alloy.py --quick    # about 2 minutes

1. A surrogate swap energy (what one Monte Carlo trial costs, from the affected sites only) against one EMT
   energy of the same 256-atom Cu3Au fcc cell. Goal: >= 10^4 x faster.
2. Active against random selection on EMT Cu3Au (fcc L=2, 32 atoms): the held-out error on fresh Monte
   Carlo samples after each round, against the reference energies spent -- both curves, same budget.
   Goal: active learning reaches the error with fewer reference calls; EMT error <= 2 meV/atom.
3. T_c of the bcc 50/50 pair model from a surrogate trained actively on <= 300 pair energies (sizes
   6, 8, 10), against the exact Ising value and against the same scans on the pair model itself. Goal: 2 %.

4. Against a cluster expansion fitted with CLEASE (``pip install clease``, a benchmark-only dependency) on the
   same EMT Cu3Au training set (fcc L=3, 108 atoms; random and Monte Carlo configurations): held-out MAE of
   the CE (pairs to 6 A, triplets to 5 A, quadruplets to 4 A; CLEASE's correlation functions, Tikhonov fit)
   and of the surrogate seeing 1 and 3 neighbour shells. Goal: the surrogate's error lower.

The Monte Carlo against CLEASE's is ``benchmarks/alloy_mc.py``.
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from _common import blas_threads, report  # noqa: E402

from hpcai.apps import alloy_surrogate as app  # noqa: E402
from hpcai.apps.alloy_model import Surrogate  # noqa: E402
from hpcai.runner import run_app  # noqa: E402
from hpcai.sim import alloy  # noqa: E402


def swap_against_emt(report=report, repeats=200) -> None:
    lattice = alloy.Lattice("fcc", 4)
    reference = alloy.AseReference(lattice, ("Cu", "Au"), cache_size=0)
    x = alloy.random_occupation(lattice, (0.75, 0.25), (41,), seed=0)
    t0 = time.perf_counter()
    e = reference.energies(x[:8])
    emt = (time.perf_counter() - t0) / 8
    surrogate = Surrogate(lattice, 2, hidden=16, ensemble=4)
    surrogate.fit(x[:8], e, epochs=5)
    rng = np.random.default_rng(1)
    report("EMT energy, 256-atom Cu3Au cell (ms)", emt * 1e3)
    for batch in (1, 256, 4096):
        occ = np.repeat(x[8:9], batch, axis=0)
        swaps = 0
        t0 = time.perf_counter()
        for _ in range(repeats if batch == 1 else repeats // 10):
            i = rng.integers(lattice.n_sites, size=batch)
            j = (i + 1 + rng.integers(lattice.n_sites - 1, size=batch)) % lattice.n_sites  # j != i
            surrogate.features.swap_deltas(occ, i, j)
            swaps += batch
        swap = (time.perf_counter() - t0) / swaps
        report(f"surrogate swap energy, {batch} chain(s) at once (us)", swap * 1e6, "ensemble of 4; per swap")
        report("  speed-up over one EMT energy (x)", emt / swap, "goal >= 1e4")


def active_against_random(report=report, quick=False) -> None:
    base = dict(lattice="fcc", size=2, elements="Cu,Au", composition=0.75, reference="emt", t_min=300.0,
                t_max=900.0, temperatures=6, initial=24, per_round=16, rounds=4 if quick else 7, tolerance=1e-9,
                epochs=300, explore_sweeps=20, tc_sizes="2,3", scan_sweeps=16, replicas=1)
    for selection in ("active", "random"):
        t0 = time.perf_counter()
        result = run_app("alloy_surrogate", app.Config(**base, selection=selection), verbose=0)
        calls, mae = result.arrays["learning_calls"], result.arrays["learning_mae_mev"]
        curve = ", ".join(f"{int(c)}: {m:.2f}" for c, m in zip(calls, mae))
        report(f"{selection}: error on fresh MC samples (meV/atom)", float(mae[-1]),
               f"after {result.metrics['reference_calls']} EMT energies; curve {{calls: error}} {curve}; "
               f"{time.perf_counter() - t0:.0f} s")


def critical_temperature(report=report, quick=False) -> None:
    sizes = "4,6" if quick else "6,8,10"
    config = app.Config(size=4, rounds=4, initial=60, per_round=40, tolerance=1e-9, tc_sizes=sizes,
                        t_min=650.0, t_max=820.0, temperatures=8, replicas=4, scan_sweeps=400 if quick else 1500)
    t0 = time.perf_counter()
    m = run_app("alloy_surrogate", config, verbose=0).metrics
    for key, what in (("tc", "surrogate"), ("tc_reference", "pair model itself")):
        report(f"T_c error, {what} (%)", 100 * (m[key] / m["tc_exact"] - 1),
               f"T_c {m[key]:.1f} K vs exact {m['tc_exact']:.1f} K; sizes {sizes}; {m['reference_calls']} "
               f"reference energies; {time.perf_counter() - t0:.0f} s")


def against_cluster_expansion(report=report, quick=False) -> None:
    try:
        from ase.build import bulk
        from clease.corr_func import CorrFunction
        from clease.regression import Tikhonov
        from clease.settings import CEBulk, Concentration
    except ImportError as exc:
        print(f"  (cluster expansion skipped: {exc.name} missing; pip install clease)")
        return
    import tempfile
    lattice, elements, composition = alloy.Lattice("fcc", 3), ("Cu", "Au"), (0.75, 0.25)
    reference = alloy.AseReference(lattice, elements)
    a = alloy.vegard_lattice_constant("fcc", elements, composition)
    n_random, n_mc = (60, 40) if quick else (108, 72)
    mc = alloy.MonteCarlo(reference, alloy.random_occupation(lattice, composition, (n_mc,), seed=2),
                          np.linspace(0.01, 0.08, n_mc), seed=3)
    mc.sweep(3)
    x = np.concatenate([alloy.random_occupation(lattice, composition, (n_random,), seed=1), mc.occupation])
    x = x[np.random.default_rng(4).permutation(len(x))]
    e, n = reference.energies(x), lattice.n_sites
    train, test = slice(0, int(0.78 * len(x))), slice(int(0.78 * len(x)), None)
    with tempfile.TemporaryDirectory() as folder:
        settings = CEBulk(Concentration(basis_elements=[list(elements)]), crystalstructure="fcc", a=a, size=[1, 1, 1],
                          max_cluster_dia=[6.0, 5.0, 4.0], db_name=os.path.join(folder, "ce.db"))
        settings.set_active_template(atoms=bulk("Cu", "fcc", a=a, cubic=True).repeat(3))
        atoms = settings.atoms.copy()
        doubled = np.rint(2 * atoms.get_positions() / a).astype(int) % (2 * lattice.size)
        index = {tuple(p): i for i, p in enumerate(lattice.doubled_coordinates)}
        sites = np.array([index[tuple(p)] for p in doubled])
        cf = CorrFunction(settings)
        rows = []
        for occ in x:
            atoms.symbols = np.array(elements)[occ[sites]].tolist()
            values = cf.get_cf(atoms)
            rows.append([values[name] for name in settings.all_cf_names])
        X = np.array(rows)
        eci = Tikhonov(alpha=1e-8).fit(X[train], e[train] / n)
        ce = float(np.abs(X[test] @ eci - e[test] / n).mean() * 1e3)
    report("cluster expansion (CLEASE), held-out MAE (meV/atom)", ce,
           f"{len(settings.all_cf_names)} ECIs; {train.stop} training, {len(x) - train.stop} held-out configurations")
    for shells, triplets in ((1, 0), (3, 0), (3, 1)):
        surrogate = Surrogate(alloy.Lattice("fcc", 3, shells), 2, hidden=16, ensemble=4, triplets=triplets)
        surrogate.fit(x[train], e[train], epochs=300, lr=0.01)
        mae = float(np.abs(surrogate.energies(x[test]) - e[test]).mean() / n * 1e3)
        what = f"{shells} shell(s)" + (f", neighbour pairs of shell {triplets}" if triplets else ", counts only")
        report(f"surrogate, {what}, held-out MAE (meV/atom)", mae, f"{mae / ce:.2f}x the CE's error")


if __name__ == "__main__":
    quick = "--quick" in sys.argv[1:]
    print(f"numpy {np.__version__}; BLAS threads {blas_threads()}; cpus {os.cpu_count()}")
    swap_against_emt()
    active_against_random(quick=quick)
    critical_temperature(quick=quick)
    against_cluster_expansion(quick=quick)
