r"""Order-disorder transitions: temperature scans with errors, Binder-cumulant crossings, exact Ising T_c.

:func:`temperature_scan` runs a replicas x temperatures batch of canonical chains (with replica exchange
between neighbouring temperatures) and returns, per temperature, the energy, heat capacity, order
parameter, Binder cumulant and Warren-Cowley SRO with block-jackknife errors (:class:`Scan`).

:func:`critical_temperature` locates :math:`T_c` where the Binder cumulants :math:`U_L(T)` of two sizes
cross [Binder 1981; Landau & Binder 2021, sec. 4.2.3]. The curves come from multiple-histogram
reweighting of each scan's samples (:mod:`~hpcai.sim.alloy.reweighting`), so they are continuous in
:math:`T` and the crossing is a root, not a fit; its error is a jackknife over groups of samples. The
crossing of the two largest sizes is the estimate. :func:`binder_crossing` does the same from bare
:math:`U_L(T)` arrays (weighted polynomial fits, parametric bootstrap), and :func:`reweight_scan` gives
smooth E, C, order and :math:`U_L` curves with errors for plots. First-order transitions (L1_0, L1_2 on fcc)
are located in one cell by :func:`transition_temperatures`: the reweighted heat-capacity peak and the
midpoint of the energy jump.

:func:`ising_critical_temperature` is the oracle: a binary nearest-neighbour pair model is the Ising
model with :math:`J = -V/4` (:meth:`~hpcai.sim.alloy.energy.PairModel.ising`), so at 50/50 on sc or bcc
(bipartite: the ordering antiferromagnet has the ferromagnet's :math:`|T_c|`)
:math:`k_BT_c = |J|/K_c` with the critical couplings in :data:`ISING_KC`.

References
----------
Binder, K. (1981). Finite size scaling analysis of Ising model block distribution functions. Z. Phys. B 43,
119-140.
Ferrenberg, A. M., Xu, J. and Landau, D. P. (2018). Pushing the limits of Monte Carlo simulations for the
three-dimensional Ising model. Phys. Rev. E 97, 043301 (sc: K_c = 0.221654626).
Lundow, P. H., Markstrom, K. and Rosengren, A. (2009). The Ising model for the bcc, fcc and diamond
lattices: a comparison. Phil. Mag. 89, 2009-2042 (bcc: K_c = 0.1573725; fcc: K_c = 0.102069).
Landau, D. P. and Binder, K. (2021). A Guide to Monte Carlo Simulations in Statistical Physics, 5th ed.
"""
from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np
import scipy.optimize

from ... import checks
from .energy import EnergyModel, PairModel
from .lattice import random_occupation, species_counts
from .montecarlo import MonteCarlo, check_temperatures
from .observables import Estimate, block_means, jackknife, order_parameter, warren_cowley
from .reweighting import Reweighting

__all__ = ["ISING_KC", "Crossing", "Scan", "binder_crossing", "critical_temperature",
           "ising_critical_temperature", "reweight_scan", "temperature_scan", "transition_temperatures"]

#: Critical coupling K_c = J / k_B T_c of the nearest-neighbour Ising model per lattice.
ISING_KC = {"sc": 0.221654626, "bcc": 0.1573725, "fcc": 0.102069}


def ising_critical_temperature(model: PairModel) -> float:
    r"""Exact :math:`k_BT_c = |V|/(4K_c)` of a binary nearest-neighbour pair model at 50/50 composition.

    Valid on sc and bcc for either sign of :math:`V` (B2 ordering, or unmixing), and on fcc for
    :math:`V < 0` only (unmixing); fcc ordering (:math:`V > 0`) is frustrated and has no exact value.
    """
    if not isinstance(model, PairModel) or model.n_species != 2:
        raise ValueError("model: expected a binary PairModel")
    V = model.ordering_energy
    if np.any(V[1:] != 0):
        raise ValueError("model: the exact T_c is known for nearest-neighbour bonds only; further shells "
                         f"have V = {V[1:].tolist()}")
    kind = model.lattice.kind
    if V[0] == 0 or (kind == "fcc" and V[0] > 0):
        raise ValueError(f"model: no exact Ising T_c for V = {V[0]:g} on {kind} (ordering on fcc is frustrated)")
    return abs(float(V[0])) / 4 / ISING_KC[kind]


@dataclasses.dataclass
class Scan:
    """Equilibrium averages over a temperature grid, each an :class:`Estimate` (value, error) per temperature.

    ``energy`` is per site; ``heat_capacity`` per site in units of :math:`k_B`; ``order`` the mean order
    parameter (:func:`~hpcai.sim.alloy.observables.order_parameter`) and ``binder`` its cumulant (both
    None without a ``structure``); ``sro`` the Warren-Cowley parameters ``(n_T, shells, S, S)``.
    ``samples`` holds the raw series, shape ``(n_samples, replicas, n_T, ...)``.
    """

    temperatures: np.ndarray
    size: int
    n_sites: int
    energy: Estimate
    heat_capacity: Estimate
    order: Estimate | None
    binder: Estimate | None
    sro: Estimate
    acceptance: np.ndarray
    exchange_acceptance: np.ndarray
    samples: dict


def temperature_scan(model: EnergyModel, temperatures, *, composition=None, occupation=None,
                     structure: str | None = None, replicas: int = 4, sweeps: int = 1000,
                     equilibration: int | None = None, every: int = 1, exchange_every: int = 1,
                     blocks: int = 8, seed=None) -> Scan:
    """Canonical Monte Carlo over a temperature grid with ``replicas`` independent chains per temperature.

    Parameters
    ----------
    model : EnergyModel
    temperatures : array_like, shape (n_T,)
        :math:`k_BT` grid, increasing (replica exchange pairs neighbours).
    composition : sequence of float, optional
        Start each chain from its own random configuration at this composition ...
    occupation : array_like, optional
        ... or from this configuration (``(n_sites,)`` or ``(replicas, n_T, n_sites)``).
    structure : {"B2", "L1_0", "L1_2"}, optional
        Order parameter to record (and its Binder cumulant).
    sweeps, equilibration : int
        Measured sweeps, and sweeps discarded before (default ``sweeps // 2``). From random starts an
        ordered phase first forms antiphase domains that anneal out slowly; an under-equilibrated scan
        puts Binder crossings too low, so equilibrate generously (several hundred sweeps near T_c) or
        start from the ordered structure (:func:`~hpcai.sim.alloy.lattice.ordered_occupation`).
    every, exchange_every : int
        Record every ``every`` sweeps; replica exchange every ``exchange_every`` sweeps (0: never).
    blocks : int
        Jackknife blocks per replica (the errors assume blocks longer than the autocorrelation time).
    seed : int or None
    """
    kT = check_temperatures("temperatures", temperatures)
    if kT.ndim != 1 or (len(kT) > 1 and np.any(np.diff(kT) <= 0)):
        raise ValueError(f"temperatures: expected an increasing 1-d grid, got {kT!r}")
    replicas = checks.integer("replicas", replicas, low=1)
    sweeps = checks.integer("sweeps", sweeps, low=1)
    equilibration = sweeps // 2 if equilibration is None else checks.integer("equilibration", equilibration, 0)
    lattice, rng = model.lattice, np.random.default_rng(seed)
    if (composition is None) == (occupation is None):
        raise ValueError("composition: give exactly one of composition and occupation")
    if composition is not None:
        species_counts(lattice.n_sites, composition)
        occupation = random_occupation(lattice, composition, (replicas, len(kT)), seed=rng)
    observables = {"sro": lambda occ: warren_cowley(occ, lattice, model.n_species)}
    if structure is not None:
        observables["order"] = lambda occ: order_parameter(occ, lattice, structure)
        observables["order"](occupation)  # a wrong structure fails now, not after the equilibration
    mc = MonteCarlo(model, occupation, np.broadcast_to(kT, (replicas, len(kT))), seed=rng)
    if len(kT) < 2:
        exchange_every = 0
    mc.sample(equilibration, exchange_every=exchange_every)
    samples = mc.sample(sweeps, every=every, observables=observables, exchange_every=exchange_every)
    return _summarise(samples, kT, lattice.size, lattice.n_sites, blocks, mc.acceptance.mean(0),
                      mc.exchange_accepted / np.maximum(mc.exchange_trials, 1))


def _summarise(samples, kT, size, n_sites, blocks, acceptance, exchange_acceptance) -> Scan:
    blocks = min(blocks, len(samples["energy"]))
    e = samples["energy"] - samples["energy"].mean()            # shift: the variance keeps its digits
    shift = samples["energy"].mean()
    means = block_means(np.stack([e, e ** 2], -1), blocks, replica_axis=1)
    energy = jackknife(lambda a: (a[..., 0] + shift) / n_sites, means)
    heat = jackknife(lambda a: (a[..., 1] - a[..., 0] ** 2) / kT ** 2 / n_sites, means)
    sro = jackknife(lambda a: a, block_means(samples["sro"], blocks, replica_axis=1))
    order = binder = None
    if "order" in samples:
        m = samples["order"]
        means = block_means(np.stack([m, m ** 2, m ** 4], -1), blocks, replica_axis=1)
        order = jackknife(lambda a: a[..., 0], means)
        binder = jackknife(lambda a: 1 - a[..., 2] / (3 * a[..., 1] ** 2), means)
    return Scan(kT, size, n_sites, energy, heat, order, binder, sro, acceptance, exchange_acceptance, samples)


@dataclasses.dataclass
class Crossing:
    """T_c from Binder-cumulant crossings: ``tc`` and its statistical ``error`` (the crossing of the two
    largest sizes), and every consecutive pair's crossing (``pairs``, ``temperatures``, ``errors``)."""

    tc: float
    error: float
    pairs: list
    temperatures: np.ndarray
    errors: np.ndarray


def binder_crossing(sizes: Sequence[int], temperatures, binder, binder_error, *, degree: int = 3,
                    resamples: int = 400, seed=0) -> Crossing:
    """Crossings of Binder-cumulant curves of consecutive sizes (sorted), from weighted polynomial fits.

    Parameters
    ----------
    sizes : sequence of int
        ``L`` of each curve (at least 2).
    temperatures, binder, binder_error : sequence of array_like
        Per size, the temperature grid and :math:`U_L` with its errors (grids may differ; the crossing is
        sought where they overlap). A single array is shared by all sizes.
    degree : int
        Polynomial degree of the fits (keep the grid narrow around :math:`T_c` so a low degree suffices).
    resamples : int
        Parametric-bootstrap resamples for the errors.
    """
    sizes = [checks.integer(f"sizes[{k}]", L, low=1) for k, L in enumerate(sizes)]
    if len(sizes) < 2 or len(set(sizes)) != len(sizes):
        raise ValueError(f"sizes: expected at least 2 distinct sizes, got {sizes}")
    degree = checks.integer("degree", degree, 1, 8)
    resamples = checks.integer("resamples", resamples, 10)
    curves = [_curve(L, *(_per_size(a, k) for a in (temperatures, binder, binder_error)), degree)
              for k, L in enumerate(sizes)]
    curves.sort(key=lambda c: c[0])
    rng = np.random.default_rng(seed)
    pairs, found, errors = [], [], []
    for small, big in itertools.pairwise(curves):
        t, err = _crossing(small, big, degree, resamples, rng)
        pairs.append((small[0], big[0]))
        found.append(t)
        errors.append(err)
    return Crossing(found[-1], errors[-1], pairs, np.array(found), np.array(errors))


def critical_temperature(scans: Sequence[Scan], groups: int = 8) -> Crossing:
    """T_c from the Binder-cumulant crossings of several :class:`Scan` s (one per size), by reweighting.

    For consecutive sizes, :math:`U_{L'}(T) - U_L(T)` is evaluated on the reweighted curves and its falling
    root found (``scipy.optimize.brentq``); the error is a delete-one jackknife over ``groups`` equal groups
    of each scan's samples (replica by replica, in time order), the same group left out of both sizes.
    """
    scans = sorted(scans, key=lambda s: s.size)
    if len(scans) < 2 or len({s.size for s in scans}) != len(scans):
        raise ValueError(f"scans: expected scans of at least 2 distinct sizes, got {[s.size for s in scans]}")
    if any(s.binder is None for s in scans):
        raise ValueError("scans: every scan needs a Binder cumulant (run temperature_scan with a structure)")
    groups = checks.integer("groups", groups, 2)
    curves = [_binder_curves(s, groups) for s in scans]
    pairs, found, errors = [], [], []
    for (small, big), (cs, cb) in zip(itertools.pairwise(scans), itertools.pairwise(curves)):
        lo = max(small.temperatures[0], big.temperatures[0])
        hi = min(small.temperatures[-1], big.temperatures[-1])
        t = _falling_root(cs[0], cb[0], lo, hi)
        if t is None:
            raise ValueError(f"scans: U_L for L={small.size} and L={big.size} do not cross (falling) within "
                             f"[{lo:.5g}, {hi:.5g}]; scan a wider range or longer")
        leave_out = np.array([_falling_root(a, b, lo, hi) for a, b in zip(cs[1:], cb[1:])], dtype=float)
        if np.isnan(leave_out).any():
            raise ValueError(f"scans: the crossing of L={small.size} and L={big.size} is not resolved by the "
                             f"samples (a jackknife group loses it); sample longer")
        pairs.append((small.size, big.size))
        found.append(t)
        errors.append(float(np.sqrt((groups - 1) / groups * ((leave_out - leave_out.mean()) ** 2).sum())))
    return Crossing(found[-1], errors[-1], pairs, np.array(found), np.array(errors))


def reweight_scan(scan: Scan, temperatures, groups: int = 8) -> dict:
    """Smooth curves from a :class:`Scan` by multiple-histogram reweighting, with jackknife errors.

    Returns a dict of :class:`~hpcai.sim.alloy.observables.Estimate` at ``temperatures`` (within the
    scanned range): ``energy`` (per site), ``heat_capacity`` (per site, k_B), and with an order
    parameter also ``order`` and ``binder``.
    """
    kT = check_temperatures("temperatures", temperatures).reshape(-1)
    if kT.min() < scan.temperatures[0] or kT.max() > scan.temperatures[-1]:
        raise ValueError(f"temperatures: expected values within the scanned [{scan.temperatures[0]:.5g}, "
                         f"{scan.temperatures[-1]:.5g}], got [{kT.min():.5g}, {kT.max():.5g}]")
    groups = checks.integer("groups", groups, 2)
    values = [_curves_at(rw, scan, kT) for rw in _reweightings(scan, groups)]
    out = {}
    for name in values[0]:
        full, rest = values[0][name], np.array([v[name] for v in values[1:]])
        out[name] = Estimate(full, np.sqrt((groups - 1) / groups * ((rest - rest.mean(0)) ** 2).sum(0)))
    return out


def transition_temperatures(scan: Scan, points: int = 641, groups: int = 8) -> dict:
    """Where one cell's transition lies, from its energy alone: for first-order transitions (L1_0, L1_2),
    whose order-parameter cumulant dips near T_c instead of crossing cleanly between sizes.

    Returns :class:`~hpcai.sim.alloy.observables.Estimate` s of :math:`k_BT` with jackknife errors over
    ``groups`` groups of samples: ``heat_capacity_peak``, the maximum of the reweighted C_v on ``points``
    temperatures spanning the scan, and ``energy_midpoint``, where <E> is halfway between its values at the
    two ends of the scan (the middle of the rounded energy jump; a first moment, so less noisy than C_v).
    """
    points, groups = checks.integer("points", points, 3), checks.integer("groups", groups, 2)
    fine = np.linspace(scan.temperatures[0], scan.temperatures[-1], points)
    found = []
    for rw in _reweightings(scan, groups):
        mean, var = rw.energy_moments(fine)     # <E> rises with T, so np.interp can invert it
        found.append((fine[np.argmax(var / fine ** 2)], np.interp((mean[0] + mean[-1]) / 2, mean, fine)))
    full, rest = np.array(found[0]), np.array(found[1:])
    error = np.sqrt((groups - 1) / groups * ((rest - rest.mean(0)) ** 2).sum(0))
    return {"heat_capacity_peak": Estimate(full[0], error[0]), "energy_midpoint": Estimate(full[1], error[1])}


def _reweightings(scan: Scan, groups: int):
    """The reweighting of all samples, then of all but group g for each g (warm-started)."""
    energies = scan.samples["energy"]
    n, replicas = energies.shape[:2]
    if n * replicas < groups:
        raise ValueError(f"groups: {groups} groups need at least as many samples per temperature, got {n * replicas}")
    label = (np.arange(replicas)[None, :] * n + np.arange(n)[:, None]) * groups // (n * replicas)
    full = Reweighting(energies, scan.temperatures)
    yield full
    for g in range(groups):
        mask = np.broadcast_to((label != g)[..., None], energies.shape)
        yield Reweighting(energies, scan.temperatures, mask=mask, initial=full.free_energies)


def _curves_at(rw: Reweighting, scan: Scan, kT: np.ndarray) -> dict:
    mean, var = rw.energy_moments(kT)
    out = {"energy": mean / scan.n_sites, "heat_capacity": var / kT ** 2 / scan.n_sites}
    if "order" in scan.samples:
        m = scan.samples["order"]
        m2, m4 = rw.mean(m ** 2, kT), rw.mean(m ** 4, kT)
        out.update(order=rw.mean(m, kT), binder=1 - m4 / (3 * m2 ** 2))
    return out


def _binder_curves(scan: Scan, groups: int) -> list:
    """U_L(T) as functions, for all samples and with each jackknife group left out."""
    m = scan.samples["order"]
    m2, m4 = m ** 2, m ** 4

    def curve(rw):
        p2, p4 = rw.pooled(m2), rw.pooled(m4)
        return lambda T: 1 - (rw.weights(T) @ p4) / (3 * (rw.weights(T) @ p2) ** 2)
    return [curve(rw) for rw in _reweightings(scan, groups)]


def _falling_root(u_small, u_big, lo, hi, points: int = 41):
    """Root of u_big - u_small in [lo, hi] where it falls with T (nearest the middle), else None."""
    T = np.linspace(lo, hi, points)
    d = u_big(T) - u_small(T)
    falls = np.flatnonzero((d[:-1] > 0) & (d[1:] <= 0))
    if not falls.size:
        return None
    k = falls[np.argmin(abs(T[falls] - 0.5 * (lo + hi)))]
    return scipy.optimize.brentq(lambda t: float(u_big(t)[0] - u_small(t)[0]), T[k], T[k + 1], xtol=1e-12 * hi)


def _per_size(a, k):
    """Size ``k``'s array from a per-size sequence of arrays, or the one array shared by all sizes."""
    return np.asarray(a if np.ndim(a[0]) == 0 else a[k], dtype=np.float64)


def _curve(L, T, U, dU, degree):
    T, U, dU = (np.asarray(v, dtype=np.float64) for v in (T, U, dU))
    if not (T.ndim == 1 and T.shape == U.shape == dU.shape and len(T) > degree):
        raise ValueError(f"binder: size L={L} needs matching 1-d temperatures, values and errors with more "
                         f"than degree={degree} points, got shapes {T.shape}, {U.shape}, {dU.shape}")
    if not (np.isfinite(U).all() and np.isfinite(dU).all() and (dU > 0).all()):
        raise ValueError(f"binder_error: expected finite values > 0 for L={L}")
    return L, T, U, dU


def _fit(T, U, dU, degree, lo, hi):
    """Weighted least-squares polynomial in the scaled variable x = (2T - lo - hi) / (hi - lo)."""
    return np.polynomial.Polynomial.fit(T, U, degree, w=1 / dU, domain=[lo, hi])


def _root(p_small, p_big, lo, hi):
    """The crossing in [lo, hi] where U_big - U_small falls (larger L more ordered below T_c)."""
    diff = p_big - p_small
    roots = diff.roots()
    x = roots.real[(abs(roots.imag) < 1e-9) & (roots.real >= lo) & (roots.real <= hi)]
    x = x[diff.deriv()(x) < 0]
    if not x.size:
        return None
    return float(x[np.argmin(abs(x - 0.5 * (lo + hi)))])


def _crossing(small, big, degree, resamples, rng):
    (L1, T1, U1, e1), (L2, T2, U2, e2) = small, big
    lo, hi = max(T1.min(), T2.min()), min(T1.max(), T2.max())
    if not lo < hi:
        raise ValueError(f"temperatures: the grids of L={L1} and L={L2} do not overlap")

    def fits(u1, u2):
        return _root(_fit(T1, u1, e1, degree, lo, hi), _fit(T2, u2, e2, degree, lo, hi), lo, hi)

    t = fits(U1, U2)
    if t is None:
        raise ValueError(f"binder: U_L for L={L1} and L={L2} do not cross (falling) within "
                         f"[{lo:.5g}, {hi:.5g}]; scan a wider range or longer")
    boot = [fits(U1 + e1 * rng.standard_normal(len(U1)), U2 + e2 * rng.standard_normal(len(U2)))
            for _ in range(resamples)]
    boot = np.array([b for b in boot if b is not None])
    if len(boot) < resamples / 2:
        raise ValueError(f"binder: the crossing of L={L1} and L={L2} is not resolved by the errors "
                         f"({len(boot)} of {resamples} resamples cross); sample longer")
    return t, float(boot.std(ddof=1))
