"""The alloy surrogate: its speed against the reference it replaces, active against random learning, T_c.

  python benchmarks/alloy.py            # about 20-25 minutes on 2 busy cores (most of it direct EMT MC)
  python benchmarks/alloy.py --quick    # about 8 minutes

1. A surrogate Monte Carlo trial swap (pick, price from the affected sites' environments kept per chain,
   decide) against one EMT energy of the same 256-atom Cu3Au fcc cell, for 1, 256 and 4,096 chains at once,
   alternating with the EMT timing: the 1-shell surrogate (environment table, hpcai.sim.alloy.local) and the
   4-shell one with neighbour pairs (environment memo, hpcai.sim.alloy.memo); both run through one swap state
   (hpcai.sim.alloy.state), compiled with numba where installed. Goal: >= 10^4 x faster. In the same rounds,
   CLEASE's own Monte Carlo on the same cell with its cluster expansion (pairs, triplets, quadruplets, ECIs
   fitted to EMT): trial swaps per second of one chain against it. Goal: >= 0.5x.
2. Active learning against two baselines on EMT Cu3Au (fcc L=3, 108 atoms; 5 seeds, 4 initial random energies,
   then 4 new energies per round): random structures at the composition (what is done without active
   learning; 16 per round for 13 rounds, as they need many more) and random picks of the configurations the
   Monte Carlo visited (the loop without the ensemble's doubt). Every round's surrogate on one held-out set of
   Monte Carlo configurations at the exploration's temperatures, the same set for all (sampled with an
   independent surrogate trained on 176 EMT energies, labelled by EMT), mean +- std over the seeds, and the
   EMT energies each needs to reach 2, 1, 0.5 and 0.25 meV/atom (median over the seeds, and where the seeds'
   mean error falls below it). Goal: active learning reaches the error with fewer reference calls; EMT error
   <= 2 meV/atom.
3. T_c of EMT Cu3Au from the surrogate (trained actively on fcc L=2) against Monte Carlo run directly on EMT
   energies, both on the same 32-atom cell (fcc L=2, the smallest that holds L1_2; direct EMT costs one
   EMT energy per trial swap): the energy midpoint and heat-capacity peak, reweighted between 7 temperatures,
   from all chains and per independent chain (mean +- spread of 3 for direct EMT). Goal: 5 %.
4. T_c of the bcc 50/50 pair model from a surrogate trained actively on <= 300 pair energies (Binder
   crossings of L = 4, 6, 8 with the protocol of alloy_mc.py), against the exact Ising value and against the
   same scans on the pair model itself. Goal: 2 %.
5. Against a cluster expansion fitted with CLEASE (``pip install clease``, a benchmark-only dependency) on the
   same EMT Cu3Au training set (fcc L=3, 108 atoms; random configurations, and Monte Carlo ones sampled with a
   pair-level surrogate fitted to the random ones at 0.01-0.08 eV, all labelled by EMT): held-out MAE of
   the CE (pairs to 6 A, triplets to 5 A, quadruplets to 4 A; CLEASE's correlation functions, Tikhonov fit)
   and of the surrogate with 1 to 3 neighbour shells, with and without neighbour-pair (three-site) features.
   Goal: the surrogate's error lower.

The pair-model Monte Carlo against CLEASE's, L = 8..16, is ``benchmarks/alloy_mc.py``.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from _common import blas_threads, report  # noqa: E402

from hpcai.apps import alloy_surrogate as app  # noqa: E402
from hpcai.apps.alloy_model import Surrogate  # noqa: E402
from hpcai.runner import run_app  # noqa: E402
from hpcai.sim import alloy  # noqa: E402


def clease_correlations(lattice, elements, a, x, db):
    """CLEASE's fcc cluster set of section 5 (pairs to 6 A, triplets to 5 A, quadruplets to 4 A) on ``lattice``'s
    cell, and the correlation functions of the configurations ``x`` in it: (settings, atoms, sites, rows), where
    ``sites[k]`` is the lattice site of CLEASE's atom k and ``rows`` (len(x), ECIs)."""
    from ase.build import bulk
    from clease.corr_func import CorrFunction
    from clease.settings import CEBulk, Concentration
    settings = CEBulk(Concentration(basis_elements=[list(elements)]), crystalstructure="fcc", a=a, size=[1, 1, 1],
                      max_cluster_dia=[6.0, 5.0, 4.0], db_name=db)
    settings.set_active_template(atoms=bulk(elements[0], "fcc", a=a, cubic=True).repeat(lattice.size))
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
    return settings, atoms, sites, np.array(rows)


def clease_peer(lattice, elements, composition, occupation, x, e, kT, folder):
    """CLEASE's canonical Monte Carlo on the same cell: a cluster expansion with the cluster set of section 5
    (pairs to 6 A, triplets to 5 A, quadruplets to 4 A), ECIs fitted (Tikhonov) to the EMT energies ``e`` of
    configurations ``x``, started from ``occupation``; or None (and why) without CLEASE."""
    try:
        from clease.calculator import attach_calculator
        from clease.montecarlo import Montecarlo
        from clease.regression import Tikhonov
    except ImportError as exc:
        return None, f"clease not installed ({exc.name}); pip install clease to compare"
    a = alloy.vegard_lattice_constant("fcc", elements, composition)
    settings, atoms, sites, rows = clease_correlations(lattice, elements, a, x, os.path.join(folder, "mc.db"))
    eci = dict(zip(settings.all_cf_names, Tikhonov(alpha=1e-6).fit(rows, e / lattice.n_sites)))
    atoms.symbols = np.array(elements)[occupation[sites]].tolist()
    atoms = attach_calculator(settings, atoms=atoms, eci=eci)
    return Montecarlo(atoms, kT / alloy.KB_EV), f"{len(eci)} ECIs"


def swap_against_emt(report=report, repeats=3, seconds=1.0) -> None:
    """One EMT energy against one surrogate trial swap, measured alternately ``repeats`` times (busy cores): the
    1-shell surrogate (environment table) and the 4-shell one with neighbour pairs (``triplets=1``, the variant
    that beats the cluster expansion; environment memo, hpcai.sim.alloy.memo). The memo is warmed first (the
    networks run only on environments not met before; its misses during the measurement are reported).
    In the same rounds, CLEASE's own canonical Monte Carlo on the same 256-atom cell at the same temperature
    with its cluster expansion of section 5 (pairs, triplets, quadruplets): the peer of the surrogate's single
    chain (goal >= 0.5x its trial swaps per second)."""
    lattice = alloy.Lattice("fcc", 4)
    reference = alloy.AseReference(lattice, ("Cu", "Au"), cache_size=0)
    x = alloy.random_occupation(lattice, (0.75, 0.25), (24,), seed=0)
    surrogate = Surrogate(lattice, 2, hidden=16, ensemble=4)
    e = reference.energies(x[:8])
    folder = tempfile.mkdtemp()
    t0 = time.perf_counter()
    peer, peer_note = clease_peer(lattice, ("Cu", "Au"), (0.75, 0.25), x[8], x[:8], e, 600 * alloy.KB_EV, folder)
    if peer is None:
        print(f"  (no CLEASE peer: {peer_note})")
    else:
        peer.run(steps=2000)
        peer_note += f" (pairs < 6 A, triplets < 5 A, quadruplets < 4 A); set up in {time.perf_counter() - t0:.0f} s"
    surrogate.fit(x[:8], e, epochs=5)
    triplet = Surrogate(alloy.Lattice("fcc", 4, 4), 2, hidden=16, ensemble=4, triplets=1)
    triplet.fit(x[:8], e, epochs=5)
    t0 = time.perf_counter()
    surrogate.features.site_table()
    report("surrogate environment table, built once per training round (ms)", (time.perf_counter() - t0) * 1e3,
           f"{surrogate.features.site_table_geometry.size} environments x 4 networks")
    kT = 600 * alloy.KB_EV
    models = {"1 shell": surrogate.features, "4 shells + triplets": triplet.features}
    chains_of = (1, 256, 4096)
    runs = {(name, chains): alloy.MonteCarlo(model, np.repeat(x[8:9], chains, axis=0), np.full(chains, kT), seed=chains)
            for name, model in models.items() for chains in chains_of}
    t0 = time.perf_counter()
    for (name, chains), mc in runs.items():
        mc.step(8 if name == "1 shell" else (2000 if chains == 1 else 100))   # warm-up: fills the memo
    memo = triplet.features.memo()
    report("triplet surrogate: environments met while warming up (memo entries)", len(memo),
           f"{memo.evaluated} network rows evaluated; warm-up {time.perf_counter() - t0:.0f} s")
    ratios: dict = {}
    for k in range(repeats):
        t0 = time.perf_counter()
        reference.energies(x[8 + 2 * k:10 + 2 * k])
        emt = (time.perf_counter() - t0) / 2
        for (name, chains), mc in runs.items():
            # what a trial costs inside the Monte Carlo: pick, price (per-chain state; memo), decide
            misses, steps, t1 = memo.evaluated, 0, time.perf_counter()
            while time.perf_counter() - t1 < seconds / (4 if chains > 256 else 1):
                n = 64 if chains > 1 else (4096 if name == "1 shell" else 256)
                mc.step(n)
                steps += n
            swap = (time.perf_counter() - t1) / (steps * chains)
            ratios.setdefault((name, chains), []).append(emt / swap)
            ratios.setdefault(("misses", name, chains), []).append((memo.evaluated - misses) / (steps * chains))
        ratios.setdefault("emt", []).append(emt * 1e3)
        if peer is not None:
            steps, t1 = 0, time.perf_counter()
            while time.perf_counter() - t1 < seconds:
                peer.run(steps=1000)
                steps += 1000
            ratios.setdefault("clease", []).append(steps / (time.perf_counter() - t1))
    report("EMT energy, 256-atom Cu3Au cell (ms)", float(np.median(ratios["emt"])),
           f"range {min(ratios['emt']):.0f}-{max(ratios['emt']):.0f} over {repeats} alternating measurements")
    for name in models:
        for chains in chains_of:
            r = ratios[(name, chains)]
            note = f"range {min(r):.0f}-{max(r):.0f}; goal >= 1e4; ensemble of 4, hidden 16"
            if name != "1 shell":
                note += f"; network rows per trial {max(ratios[('misses', name, chains)]):.3f} (memo misses)"
            report(f"surrogate ({name}) Monte Carlo trial swap, {chains} chain(s): speed-up over one EMT energy (x)",
                   float(np.median(r)), note)
    if peer is not None:
        r = ratios["clease"]
        report("CLEASE canonical Monte Carlo, same 256-atom cell, 600 K (trial swaps/s)", float(np.median(r)),
               f"range {min(r):.3g}-{max(r):.3g}; 1 chain; acceptance "
               f"{peer.get_thermodynamic_quantities()['accept_rate']:.2f}; {peer_note}")
        for name in models:
            ours = [speedup / (1e-3 * ms) for ms, speedup in zip(ratios["emt"], ratios[(name, 1)])]   # swaps/s
            x = [a / b for a, b in zip(ours, r)]                # against CLEASE's in the same round
            report(f"surrogate ({name}), 1 chain: trial swaps/s against CLEASE's Monte Carlo (x)", float(np.median(x)),
                   f"range {min(x):.2f}-{max(x):.2f} (alternating rounds); {np.median(ours):.3g} swaps/s; "
                   f"goal >= 0.5x")
    shutil.rmtree(folder, ignore_errors=True)


def held_out_samples(base: dict, per_temperature: int = 16, seed: int = 1000):
    """Monte Carlo configurations at the temperatures of ``base`` (an alloy_surrogate configuration), labelled
    by its reference: the chains run on a surrogate trained on 176 reference energies of random selection with
    its own ``seed`` (none of the compared runs' data), near enough to the reference that its samples stand
    for the reference's own (its error on them is reported). Returns (occupation, energies, MAE meV/atom)."""
    config = app.Config(**{**base, "selection": "random", "seed": seed, "initial": 64, "per_round": 16,
                           "rounds": 8})
    sampler = config.surrogate().load_vector(run_app("alloy_surrogate", config, verbose=0).arrays[
        "surrogate_weights"])
    kT, chains = config.kT(), 4
    mc = alloy.MonteCarlo(sampler.features, alloy.random_occupation(
        sampler.lattice, config.fractions(), (chains, len(kT)), seed=seed + 1), np.broadcast_to(kT, (chains, len(kT))),
        seed=seed + 2)
    mc.sweep(40)                                             # equilibrate from the random start
    occupation = []
    for _ in range(per_temperature // chains):
        mc.sweep(10)                                         # well apart along each chain
        occupation.append(mc.occupation.reshape(-1, sampler.lattice.n_sites).copy())
    occupation = np.concatenate(occupation)
    energies = config.reference_model().energies(occupation)
    mae = float(np.abs(sampler.energies(occupation) - energies).mean() / sampler.lattice.n_sites * 1e3)
    return occupation, energies, mae


def active_against_random(report=report, quick=False, seeds=(0, 1, 2, 3, 4), targets=(2.0, 1.0, 0.5, 0.25),
                          size=3, initial=4, per_round=4, rounds=10, structures=(16, 13), **surrogate) -> None:
    """Active learning against two baselines on EMT Cu3Au (fcc, ``size``^3 cubic cells), over ``seeds`` (the
    initial set, the Monte Carlo and the networks differ): random structures at the composition (what is done
    without active learning) and random picks of the configurations the Monte Carlo visited (the loop without
    the ensemble's doubt). Every round's surrogate is scored on one held-out set of Monte Carlo configurations
    (:func:`held_out_samples`): mean +- std over the seeds, and the reference calls each selection needs to
    reach each of ``targets`` meV/atom (median over the seeds, with how many seeds got there at all, and where
    the seeds' mean error falls below it). Random structures need many more energies, so they are labelled
    ``structures`` = (per round, rounds) at a time. ``surrogate``: other alloy_surrogate settings (``shells=3``)."""
    base = dict(lattice="fcc", size=size, elements="Cu,Au", composition=0.75, reference="emt", t_min=300.0,
                t_max=900.0, temperatures=6, initial=initial, per_round=per_round,
                rounds=min(rounds, 6) if quick else rounds, tolerance=1e-9, epochs=300, explore_sweeps=20,
                tc_sizes="2,3", scan_sweeps=16, refine=0, replicas=1, **surrogate)  # (T_c is not used here)
    t0 = time.perf_counter()
    occupation, energies, sampler_mae = held_out_samples(base)
    report("held-out Monte Carlo configurations (EMT-labelled)", len(occupation),
           f"{base['temperatures']} temperatures {base['t_min']:g}-{base['t_max']:g} K; the sampling surrogate's "
           f"error on them {sampler_mae:.3f} meV/atom; {time.perf_counter() - t0:.0f} s")
    needed = {}
    for selection in app.SELECTIONS:
        t0, curves = time.perf_counter(), []
        schedule = dict(zip(("per_round", "rounds"), structures)) if selection == "structures" and not quick else {}
        for seed in seeds:
            config = app.Config(**{**base, **schedule}, selection=selection, seed=seed)
            arrays = run_app("alloy_surrogate", config, verbose=0).arrays
            calls, surrogate = arrays["round_training_calls"], config.surrogate()
            curves.append([np.abs(surrogate.load_vector(w).energies(occupation) - energies).mean()
                           / surrogate.lattice.n_sites * 1e3 for w in arrays["round_surrogate_weights"]])
        curves = np.array(curves)
        mean, std = curves.mean(0), curves.std(0)
        curve = ", ".join(f"{int(c)}: {m:.2f}+-{d:.2f}" for c, m, d in zip(calls, mean, std))
        report(f"{selection}: held-out error (meV/atom)", float(mean[-1]),
               f"mean over seeds {list(seeds)} after {int(calls[-1])} EMT energies; curve {{calls: mean+-std}} "
               f"{curve}; {time.perf_counter() - t0:.0f} s")

        def reach(c, t):                 # the calls after which error c first is <= t (inf: never)
            return float(calls[np.argmax(c <= t)]) if (c <= t).any() else np.inf
        needed[selection] = ([[reach(c, t) for c in curves] for t in targets], [reach(mean, t) for t in targets],
                             int(calls[-1]))

    def told(x, last):
        return f"{x:.0f}" if np.isfinite(x) else f"> {last}"
    active, active_mean, active_last = needed["active"]
    for k, t in enumerate(targets):
        for baseline, name in (("structures", "random structures"), ("random", "random Monte Carlo picks")):
            other, other_mean, last = needed[baseline]
            a, b = np.median(active[k]), np.median(other[k])
            bound = "" if np.isfinite(b) else f" (< this: the median seed never got there in {last})"
            report(f"EMT energies to reach {t:g} meV/atom, active / {name}", a / min(b, last),
                   f"median over seeds {told(a, active_last)} against {told(b, last)}{bound}; seeds that got "
                   f"there: {np.isfinite(active[k]).sum()} and {np.isfinite(other[k]).sum()} of {len(seeds)}; by the "
                   f"mean curve {told(active_mean[k], active_last)} and {told(other_mean[k], last)}")


def transition_temperatures(scan) -> np.ndarray:
    """``[C_v peak, its error, energy midpoint, its error]`` (k_B T) of a scan
    (:func:`hpcai.sim.alloy.transition_temperatures`)."""
    found = alloy.transition_temperatures(scan)
    return np.array([found["heat_capacity_peak"].value, found["heat_capacity_peak"].error,
                     found["energy_midpoint"].value, found["energy_midpoint"].error], dtype=float)


def emt_critical_temperature(report=report, quick=False) -> dict:
    """The surrogate's T_c of EMT Cu3Au against Monte Carlo directly on EMT energies, same 32-atom cell.

    fcc L=2 (32 atoms, 8 Au) is the smallest cell holding the L1_2 structure; one EMT energy costs about 20 ms
    there, so a direct scan of 7 temperatures x 3 independent chains x 36 sweeps is 24,000 EMT energies
    (replica exchange between the temperatures of each chain). On a cell this small the transition is
    rounded; both energies get the same estimators on the same grid (:func:`transition_temperatures`), the
    surrogate with more chains and sweeps (it is cheap). The C_v peak scatters by about 30 K between seeds,
    the energy midpoint by about 10 K: the midpoint is the comparison that can resolve 5 %. Each chain (its
    own random start and random numbers) also gives its own estimate: their mean and spread are reported, so
    the direct-EMT side states its own seed-to-seed scatter. Returns the scans."""
    config = app.Config(lattice="fcc", size=2, elements="Cu,Au", composition=0.75, reference="emt", t_min=300.0,
                        t_max=1100.0, temperatures=8, initial=32, per_round=16, rounds=4 if quick else 6,
                        tolerance=1e-9, epochs=300, explore_sweeps=20, tc_sizes="2,3", scan_sweeps=16, refine=0,
                        replicas=1)  # (the app's own T_c is not used here)
    t0 = time.perf_counter()
    result = run_app("alloy_surrogate", config, verbose=0)
    surrogate = config.surrogate(2).load_vector(result.arrays["surrogate_weights"]).features
    reference = alloy.AseReference(alloy.Lattice("fcc", 2), ("Cu", "Au"))
    trained = time.perf_counter() - t0
    wide = alloy.KB_EV * np.linspace(300.0, 1300.0, 11)
    coarse = alloy.temperature_scan(surrogate, wide, composition=(0.75, 0.25), structure="L1_2", replicas=16,
                                    sweeps=400, equilibration=200, seed=1)
    grid = transition_temperatures(coarse)[0] * np.linspace(0.8, 1.2, 7)
    chains, sweeps, equilibration = (2, 12, 8) if quick else (3, 24, 12)
    found, scans = {}, {}
    for name, model, replicas, n, settle in (("surrogate", surrogate, 8, 1000, 250),
                                             ("EMT", reference, chains, sweeps, equilibration)):
        t1 = time.perf_counter()
        scans[name] = alloy.temperature_scan(model, grid, composition=(0.75, 0.25), structure="L1_2",
                                             replicas=replicas, sweeps=n, equilibration=settle, seed=2)
        found[name] = transition_temperatures(scans[name]) / alloy.KB_EV
        t, dt, mid, dmid = found[name]
        energies = scans[name].samples["energy"]              # (samples, replicas, temperatures)
        each = np.array([transition_temperatures(types.SimpleNamespace(samples={"energy": energies[:, r:r + 1]},
                                                                       temperatures=grid))
                         for r in range(replicas)]) / alloy.KB_EV
        report(f"EMT Cu3Au fcc L=2 (32 atoms): T_c, {name} Monte Carlo (K)", mid,
               f"energy midpoint +- {dmid:.0f} K (jackknife, all chains); per independent chain (own random start "
               f"and seeds) {each[:, 2].mean():.0f} +- {each[:, 2].std(ddof=1):.0f} K (mean +- sd of "
               f"{replicas}: {', '.join(f'{v:.0f}' for v in each[:, 2])}); C_v peak {t:.0f} +- {dt:.0f} K, per "
               f"chain {each[:, 0].mean():.0f} +- {each[:, 0].std(ddof=1):.0f} K; {replicas} chains x {n} sweeps "
               f"(after {settle}) per temperature, {grid[0] / alloy.KB_EV:.0f}-{grid[-1] / alloy.KB_EV:.0f} K; "
               f"{time.perf_counter() - t1:.0f} s")
        found[name + " spread"] = each[:, 2].std(ddof=1)
    s, e = found["surrogate"], found["EMT"]
    report("  surrogate against direct EMT Monte Carlo, energy midpoint (%)", 100 * (s[2] / e[2] - 1),
           f"goal within 5 %; the direct EMT chains scatter by {100 * found['EMT spread'] / e[2]:.1f} % (sd of one "
           f"chain; of their mean {100 * found['EMT spread'] / e[2] / np.sqrt(chains):.1f} %); C_v peak "
           f"{100 * (s[0] / e[0] - 1):+.1f} %; surrogate from "
           f"{result.metrics['reference_calls']} EMT energies ({result.metrics['final_mae_mev']:.2f} meV/atom on "
           f"fresh MC samples; trained in {trained:.0f} s)")
    return scans


def critical_temperature(report=report, quick=False, sizes=None, sweeps=None) -> None:
    """T_c of the bcc 50/50 pair model: a surrogate learned actively from 180 pair energies (bcc L=4 cells),
    then the protocol of ``alloy_mc.py`` on it and on the pair model itself, same seeds: 32 replicas x 9
    temperatures in 0.96-1.04 of the exact T_c per size, replica exchange every sweep, Binder cumulants
    reweighted between temperatures, T_c where the two largest sizes cross (jackknife error)."""
    sizes = sizes or ((4, 6) if quick else (4, 6, 8))
    sweeps = sweeps or (200 if quick else 400)
    config = app.Config(size=4, rounds=4, initial=60, per_round=40, tolerance=1e-9, tc_sizes="2,4",
                        t_min=650.0, t_max=820.0, temperatures=4, replicas=1, scan_sweeps=16, refine=0)
    t0 = time.perf_counter()
    result = run_app("alloy_surrogate", config, verbose=0)
    weights, calls = result.arrays["surrogate_weights"], result.metrics["reference_calls"]
    found = {}
    for which in ("surrogate", "pair model itself"):
        scans = []
        for L in sizes:
            model = config.reference_model(L)
            exact = alloy.ising_critical_temperature(model)
            if which == "surrogate":
                model = config.surrogate(L).load_vector(weights).features
            scans.append(alloy.temperature_scan(model, exact * np.linspace(0.96, 1.04, 9), composition=(0.5, 0.5),
                                                structure="B2", replicas=32, sweeps=sweeps, equilibration=sweeps,
                                                seed=L))
        found[which] = alloy.critical_temperature(scans)
    for which, crossing in found.items():
        pairs = ", ".join(f"L={a},{b}: {t / exact - 1:+.2%}"
                          for (a, b), t in zip(crossing.pairs, crossing.temperatures))
        report(f"T_c error, {which} (%)", 100 * (crossing.tc / exact - 1),
               f"+- {100 * crossing.error / exact:.2f} %; sizes {sizes}; crossings {pairs}; {calls} reference "
               f"energies; goal 2 %")
    gap = found["surrogate"].tc / found["pair model itself"].tc - 1
    report("  surrogate against the pair model itself, same scans (%)", 100 * gap,
           f"{time.perf_counter() - t0:.0f} s in all")


def against_cluster_expansion(report=report, quick=False,
                              variants=((1, 0, 300), (3, 0, 300), (3, 1, 300), (4, 1, 300))) -> None:
    try:
        from clease.regression import Tikhonov
    except ImportError as exc:
        print(f"  (cluster expansion skipped: {exc.name} missing; pip install clease)")
        return
    lattice, elements, composition = alloy.Lattice("fcc", 3), ("Cu", "Au"), (0.75, 0.25)
    reference = alloy.AseReference(lattice, elements)
    a = alloy.vegard_lattice_constant("fcc", elements, composition)
    n_random, n_mc = (60, 40) if quick else (108, 72)
    random = alloy.random_occupation(lattice, composition, (n_random,), seed=1)
    guide = Surrogate(lattice, 2, hidden=4, ensemble=1)      # a pair-level guide, so the Monte Carlo is cheap
    guide.fit(random, reference.energies(random), epochs=1)
    mc = alloy.MonteCarlo(guide.features, alloy.random_occupation(lattice, composition, (n_mc,), seed=2),
                          np.linspace(0.01, 0.08, n_mc), seed=3)
    mc.sweep(20)                                             # partly ordered configurations, labelled by EMT below
    x = np.concatenate([random, mc.occupation])
    x = x[np.random.default_rng(4).permutation(len(x))]
    e, n = reference.energies(x), lattice.n_sites
    train, test = slice(0, int(0.78 * len(x))), slice(int(0.78 * len(x)), None)
    with tempfile.TemporaryDirectory() as folder:
        settings, _, _, X = clease_correlations(lattice, elements, a, x, os.path.join(folder, "ce.db"))
        eci = Tikhonov(alpha=1e-8).fit(X[train], e[train] / n)
        ce = float(np.abs(X[test] @ eci - e[test] / n).mean() * 1e3)
    report("cluster expansion (CLEASE), held-out MAE (meV/atom)", ce,
           f"{len(settings.all_cf_names)} ECIs; {train.stop} training, {len(x) - train.stop} held-out configurations")
    for shells, triplets, epochs in variants:
        surrogate = Surrogate(alloy.Lattice("fcc", 3, shells), 2, hidden=16, ensemble=4, triplets=triplets)
        surrogate.fit(x[train], e[train], epochs=epochs, lr=0.01)
        mae = float(np.abs(surrogate.energies(x[test]) - e[test]).mean() / n * 1e3)
        what = f"{shells} shell(s)" + (f", neighbour pairs of shells <= {triplets}" if triplets else ", counts only") \
            + f", {epochs} epochs"
        report(f"surrogate, {what}, held-out MAE (meV/atom)", mae, f"{mae / ce:.2f}x the CE's error")


if __name__ == "__main__":
    quick = "--quick" in sys.argv[1:]
    print(f"numpy {np.__version__}; BLAS threads {blas_threads()}; cpus {os.cpu_count()}")
    swap_against_emt()
    active_against_random(quick=quick)
    emt_critical_temperature(quick=quick)
    critical_temperature(quick=quick)
    against_cluster_expansion(quick=quick)
