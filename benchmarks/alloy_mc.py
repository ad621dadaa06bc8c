"""Alloy lattice Monte Carlo: swap throughput against CLEASE, T_c against the exact Ising values, EMT cost.

  python benchmarks/alloy_mc.py            # about 4-5 minutes on 2 idle cores
  python benchmarks/alloy_mc.py --quick    # under a minute: smaller cells, shorter runs (a smoke test;
                                           # its T_c errors are not held to the goal)

Three sections, each printing rows (name, value, note):

1. Trial swaps per second of :class:`hpcai.sim.alloy.MonteCarlo` on the nearest-neighbour pair model,
   bcc 50/50, L = 8..16, for 1 chain and for batches of chains (the numpy implementation advances every
   chain of the batch by one swap per step). The peer, measured in the same run when ``clease`` is
   installed (``pip install clease``; a benchmark-only dependency): CLEASE's own canonical Monte Carlo
   (C++ energy updates) on the same cell with the same model -- a cluster expansion whose only ECI is the
   nearest-neighbour pair, checked to give our energy differences -- at the same temperature (1.2 T_c),
   measured alternately with ours (three rounds; ratios as ranges). The trials run through the per-chain
   environment keys (``hpcai.sim.alloy.state``): compiled with numba where installed, else numpy.
   Goal: >= 0.5x CLEASE.
2. T_c of the bcc and sc 50/50 ordering pair model from Binder-cumulant crossings of three sizes (replica
   exchange, many replicas per temperature, curves by multiple-histogram reweighting), against
   kT_c = |V| / (4 K_c) (Ferrenberg, Xu & Landau 2018; Lundow et al. 2009). Goal: within 1 %. The
   crossing of the two largest sizes is the estimate; its error is a jackknife over groups of replicas.
3. One EMT energy of a 256-atom Cu-Au fcc cell (the "expensive" reference a surrogate replaces).
"""
from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from _common import blas_threads, report  # noqa: E402

from hpcai.sim import alloy  # noqa: E402

E_AB = -0.01  # eV: e_AA = e_BB = 0, so V = 0.02 eV > 0 (B2 ordering), J = -V/4, kT_c = 0.0318 eV (369 K) on bcc


def pair_model(kind: str, size: int) -> alloy.PairModel:
    return alloy.PairModel.from_bonds(alloy.Lattice(kind, size), 0.0, 0.0, E_AB)


def hpcai_swaps_per_second(model, batch: int, kT: float, seconds: float = 2.0) -> tuple[float, float]:
    """Trial swaps per second over all chains, and the acceptance, after a short warm-up."""
    start = alloy.random_occupation(model.lattice, (0.5, 0.5), batch, seed=0)
    mc = alloy.MonteCarlo(model, start, np.full(batch, kT), seed=1)
    mc.step(100)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        mc.step(200)
        steps += 200
    return steps * batch / (time.perf_counter() - t0), float(mc.acceptance.mean())


def clease_monte_carlo(model, kT: float, folder: str):
    """CLEASE's Montecarlo on the same cell and model, or None (with the reason) when CLEASE is missing."""
    try:
        from ase.build import bulk
        from clease.calculator import attach_calculator
        from clease.montecarlo import Montecarlo
        from clease.settings import CEBulk, Concentration
    except ImportError as exc:
        return None, f"clease not installed ({exc.name}); pip install clease to compare"
    lattice = model.lattice
    a = 3.0
    settings = CEBulk(Concentration(basis_elements=[["Au", "Cu"]]), crystalstructure=lattice.kind, a=a,
                      size=[1, 1, 1], max_cluster_dia=[a * (lattice.shell_distances[0] + 0.1)],
                      db_name=os.path.join(folder, f"clease-{lattice.kind}{lattice.size}.db"))
    pair_names = [n for n in settings.all_cf_names if n.startswith("c2_")]
    z = lattice.coordination[0]
    # CLEASE: E = N * sum(ECI * cf), cf = mean over pairs of s_i s_j (s = +1 Au, -1 Cu), N z / 2 pairs.
    # Ours (Ising form): E = -J sum_pairs s_i s_j + const, so ECI = -J z / 2.
    eci = {"c0": 0.0, "c1_0": 0.0, pair_names[0]: -model.ising().J[0] * z / 2}
    atoms = bulk("Au", lattice.kind, a=a, cubic=True).repeat(lattice.size)
    start = alloy.random_occupation(lattice, (0.5, 0.5), seed=2)
    atoms.symbols = np.array(["Au", "Cu"])[start[_ase_site_order(atoms, lattice, a)]].tolist()
    atoms = attach_calculator(settings, atoms=atoms, eci=eci)
    _check_same_model(model, atoms, lattice, a)
    return Montecarlo(atoms, kT / alloy.KB_EV), ""


def _ase_site_order(atoms, lattice, a) -> np.ndarray:
    """Our site index of each ASE atom (from its position)."""
    doubled = np.rint(2 * atoms.get_positions() / a).astype(int) % (2 * lattice.size)
    index = {tuple(p): i for i, p in enumerate(lattice.doubled_coordinates)}
    return np.array([index[tuple(p)] for p in doubled])


def _check_same_model(model, atoms, lattice, a) -> None:
    """CLEASE's energy differences between configurations equal ours (the models are the same)."""
    sites = _ase_site_order(atoms, lattice, a)
    energies, ours = [], []
    rng = np.random.default_rng(3)
    for _ in range(3):
        occ = alloy.random_occupation(lattice, (0.5, 0.5), seed=rng)
        atoms.symbols = np.array(["Au", "Cu"])[occ[sites]].tolist()
        energies.append(atoms.get_potential_energy())
        ours.append(float(model.energies(occ)))
    gap = np.abs(np.diff(energies) - np.diff(ours)).max()
    if gap > 1e-8:
        raise RuntimeError(f"CLEASE's model differs from ours: energy differences disagree by {gap:.2e} eV")


def clease_swaps_per_second(mc, seconds: float = 2.0) -> tuple[float, float]:
    mc.run(steps=2000)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        mc.run(steps=5000)
        steps += 5000
    rate = steps / (time.perf_counter() - t0)
    return rate, float(mc.get_thermodynamic_quantities()["accept_rate"])


def throughput(report=report, sizes=(8, 12, 16), batches=(1, 64, 256), seconds=2.0, repeats=3) -> None:
    """Swaps per second, CLEASE and hpcai measured alternately ``repeats`` times (ratios as ranges)."""
    print("trial swaps per second, bcc 50/50 nearest-neighbour pair model at 1.2 T_c")
    with tempfile.TemporaryDirectory() as folder:
        for L in sizes:
            model = pair_model("bcc", L)
            kT = 1.2 * alloy.ising_critical_temperature(model)
            peer, why = clease_monte_carlo(model, kT, folder)
            if peer is None and L == sizes[0]:
                print(f"  (no peer: {why})")
            rates: dict = {}
            for _ in range(repeats):
                if peer is not None:
                    rates.setdefault("clease", []).append(clease_swaps_per_second(peer, seconds / repeats))
                for batch in batches:
                    rates.setdefault(batch, []).append(hpcai_swaps_per_second(model, batch, kT, seconds / repeats))
            if peer is not None:
                r = [rate for rate, _ in rates["clease"]]
                report(f"bcc L={L} ({model.lattice.n_sites} sites): CLEASE swaps/s", float(np.median(r)),
                       f"1 chain, acceptance {rates['clease'][0][1]:.2f}; range {min(r):.3g}-{max(r):.3g}")
            for batch in batches:
                r = [rate for rate, _ in rates[batch]]
                ratio = ""
                if peer is not None:
                    x = [a / b for (a, _), (b, _) in zip(rates[batch], rates["clease"])]
                    ratio = f"; {min(x):.2f}-{max(x):.2f}x CLEASE (alternating)"
                report(f"bcc L={L}: hpcai swaps/s, {batch} chain(s)", float(np.median(r)),
                       f"acceptance {rates[batch][0][1]:.2f}{ratio}")
        model = alloy.SiteEnergyModel(alloy.Lattice("bcc", sizes[0], shells=2), 2,
                                      lambda f: np.tanh(f @ np.linspace(-0.01, 0.01, f.shape[1])))
        for batch in (1, batches[-1]):
            rate, _ = hpcai_swaps_per_second(model, batch, 0.05, seconds)
            report(f"bcc L={sizes[0]}: generic per-site model swaps/s, {batch} chain(s)", rate,
                   "2 shells, the path a neural surrogate takes (environment table, per-chain keys)")


def critical_temperatures(report=report, quick=False) -> None:
    """T_c from Binder crossings against the exact Ising value, bcc and sc."""
    plan = {"bcc": (4, 6) if quick else (4, 6, 8), "sc": (6, 8) if quick else (4, 6, 8)}
    sweeps, replicas = (200, 16) if quick else (400, 32)
    print(f"T_c of the 50/50 ordering pair model from Binder crossings ({replicas} replicas x 9 temperatures "
          f"per size, {sweeps} sweeps after {sweeps} of equilibration, replica exchange every sweep; "
          f"T_c from multiple-histogram reweighted U_L(T))")
    for kind, sizes in plan.items():
        t0 = time.perf_counter()
        scans = []
        for L in sizes:
            model = pair_model(kind, L)
            exact = alloy.ising_critical_temperature(model)
            grid = exact * np.linspace(0.96, 1.04, 9)
            scans.append(alloy.temperature_scan(model, grid, composition=(0.5, 0.5), structure="B2",
                                                replicas=replicas, sweeps=sweeps, equilibration=sweeps,
                                                seed=L))
        crossing = alloy.critical_temperature(scans)
        wall = time.perf_counter() - t0
        pairs = ", ".join(f"L={a},{b}: {t / exact - 1:+.2%} +- {e / exact:.2%}"
                          for (a, b), t, e in zip(crossing.pairs, crossing.temperatures, crossing.errors))
        report(f"{kind} T_c (Binder, L={sizes[-2]},{sizes[-1]}): relative error (%)",
               100 * (crossing.tc / exact - 1),
               f"+- {100 * crossing.error / exact:.2f} %; goal 1 %; {wall:.0f} s; crossings {pairs}")


def emt_timing(report=report, repeats=10) -> None:
    """Wall time of one EMT energy of a 256-atom Cu3Au fcc cell (fresh configurations, nothing cached)."""
    try:
        reference = alloy.AseReference(alloy.Lattice("fcc", 4), ("Cu", "Au"), cache_size=0)
    except ImportError as exc:
        print(f"  (EMT skipped: {exc})")
        return
    configs = alloy.random_occupation(reference.lattice, (0.75, 0.25), repeats + 1, seed=4)
    reference.energies(configs[:1])
    t0 = time.perf_counter()
    reference.energies(configs[1:])
    ms = 1e3 * (time.perf_counter() - t0) / repeats
    report("EMT energy, 256-atom Cu-Au fcc cell (ms)", ms, f"mean of {repeats}; {1e3 / ms:.1f} evaluations/s")


def run(report=report, quick=False) -> None:
    """All sections (what ``hpcai`` benchmark runners call)."""
    throughput(report, sizes=(8,) if quick else (8, 12, 16), seconds=1.0 if quick else 2.0)
    critical_temperatures(report, quick)
    emt_timing(report)


if __name__ == "__main__":
    print(f"numpy {np.__version__}; BLAS threads {blas_threads()}; cpus {os.cpu_count()}")
    run(report, quick="--quick" in sys.argv[1:])
