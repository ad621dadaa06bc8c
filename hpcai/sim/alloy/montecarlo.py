r"""Canonical Monte Carlo of many independent chains at once: Kawasaki swaps, Metropolis, replica exchange.

A :class:`MonteCarlo` holds a *batch* of chains -- e.g. temperatures x replicas, any batch shape -- as one
occupation array ``(*batch_shape, n_sites)``. One step is one proposed swap in *every* chain, done with a
handful of numpy operations on ``(B,)`` arrays, so the Python overhead of a step is shared by all chains;
throughput grows with the batch until memory bandwidth is the limit. A model that offers a swap state
(``model.swap_state``; every tabulated or memoised :class:`~hpcai.sim.alloy.energy.SiteEnergyModel`, the pair
model included; :class:`~hpcai.sim.alloy.state.SwapState`) keeps each chain's site environment keys and site
energies and updates them on accepted swaps, so a trial costs a few look-ups. Where numba is installed
(:mod:`hpcai.accel`) the state runs whole blocks of trials compiled, chain by chain, with the same random
numbers and decisions as the numpy step (numpy's per-call overhead would dominate a single chain).

Move (canonical, fixed composition): pick an unordered pair of sites holding *different* species
uniformly among all such pairs -- a species pair :math:`(s, t)` with probability
:math:`\propto N_sN_t`, then one site of each uniformly (the per-species site lists are kept up to
date). The species counts never change, so the proposal is symmetric and Metropolis acceptance
:math:`\min(1, e^{-\beta\Delta E})` gives detailed balance with respect to :math:`e^{-\beta E}` at fixed
composition [Kawasaki 1966; Landau & Binder 2021, sec. 4.2.2 and 5.6]. Acceptance is drawn as
:math:`\beta\Delta E < X` with :math:`X \sim \mathrm{Exp}(1)`, which is the same test without overflow.

Replica exchange (parallel tempering) swaps configurations between neighbouring temperatures along the
last batch axis with probability :math:`\min(1, e^{(\beta_k-\beta_{k+1})(E_k-E_{k+1})})`
[Swendsen & Wang 1986; Hukushima & Nemoto 1996]; :func:`exchange_permutation` is the decision alone, so
the same rule serves one temperature per MPI rank (see its docstring).

Temperatures are :math:`k_BT` in the energy unit of the model (eV for ASE references; multiply kelvin by
:data:`KB_EV`). Everything is reproducible from ``seed`` (a ``numpy.random.Generator`` stream).

References
----------
Kawasaki, K. (1966). Diffusion constants near the critical point for time-dependent Ising models.
Phys. Rev. 145, 224-230.
Landau, D. P. and Binder, K. (2021). A Guide to Monte Carlo Simulations in Statistical Physics, 5th ed.
Cambridge University Press.
Hukushima, K. and Nemoto, K. (1996). Exchange Monte Carlo method and application to spin glass
simulations. J. Phys. Soc. Jpn. 65, 1604-1608.
Swendsen, R. H. and Wang, J.-S. (1986). Replica Monte Carlo simulation of spin glasses. Phys. Rev. Lett. 57,
2607-2609.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from ... import checks
from .energy import EnergyModel
from .lattice import SPECIES_DTYPE, check_occupation

__all__ = ["KB_EV", "MonteCarlo", "check_temperatures", "exchange_permutation"]

KB_EV = 8.617333262e-5  # Boltzmann constant in eV/K (CODATA 2018)
RANDOM_BLOCK = 512      # steps whose random numbers are drawn in one call


def check_temperatures(name: str, temperatures) -> np.ndarray:
    """``temperatures`` as a float array of finite k_B T > 0 (any shape), else a ValueError naming it."""
    kT = np.asarray(temperatures)
    checks.array(name, kT, kinds="fiu")
    for k, t in enumerate(kT.reshape(-1)):
        checks.number(f"{name}[{k}]" if kT.ndim else name, t.item(), 0.0, low_open=True)
    return kT.astype(np.float64)


class MonteCarlo:
    """A batch of canonical Monte Carlo chains advanced together.

    Parameters
    ----------
    model : EnergyModel
        Energies and local swap energies (see :mod:`hpcai.sim.alloy.energy`).
    occupation : array_like, shape (n_sites,) or (*batch_shape, n_sites)
        Starting configurations (broadcast to the batch); copied.
    temperatures : array_like
        :math:`k_BT` of every chain, > 0; its shape is the batch shape (a scalar: one chain). Replica
        exchange acts along the last axis, which must then be sorted (e.g. shape ``(replicas, n_T)``).
    seed : int, Generator or None
        Seed of the random stream.

    Attributes
    ----------
    occupation, energies, temperatures : ndarray
        Current state, shapes ``(*batch_shape, n_sites)``, ``batch_shape``, ``batch_shape`` (read-only
        views; use :meth:`set_temperatures` to change temperatures).
    walkers : ndarray
        Which starting chain's trajectory each slot now holds (replica exchange moves them).
    steps : int
        Trial swaps done per chain so far.
    """

    def __init__(self, model: EnergyModel, occupation, temperatures, *, seed=None):
        if not isinstance(model, EnergyModel):
            raise TypeError(f"model: expected an EnergyModel (lattice, n_species, energies, swap_deltas), "
                            f"got {type(model).__name__}")
        self.model, self.lattice = model, model.lattice
        kT = check_temperatures("temperatures", temperatures)
        self.batch_shape = kT.shape
        n_sites = self.lattice.n_sites
        occupation = check_occupation("occupation", occupation, self.lattice, model.n_species)
        try:
            occupation = np.broadcast_to(occupation, self.batch_shape + (n_sites,))
        except ValueError:
            raise ValueError(f"occupation: shape {occupation.shape} does not broadcast to the batch shape "
                             f"{self.batch_shape} of temperatures (plus {n_sites} sites)") from None
        self._occ = np.array(occupation.reshape(-1, n_sites), dtype=SPECIES_DTYPE, order="C")
        self._kT = kT.reshape(-1).copy()
        self._beta = 1.0 / self._kT
        self._energy = self._checked_energies()
        make_state = getattr(model, "swap_state", None)
        self._state = make_state(self._occ) if callable(make_state) else None
        self._init_species_lists()
        self.rng = np.random.default_rng(seed)
        self._rows = np.arange(len(self._occ))
        self._accepted = np.zeros(len(self._occ), dtype=np.int64)
        self._walkers = self._rows.copy()
        self._parity = 0
        self.steps = 0
        n_temperatures = self.batch_shape[-1] if self.batch_shape else 1
        self.exchange_trials = np.zeros(n_temperatures - 1, dtype=np.int64)   # per neighbouring pair
        self.exchange_accepted = np.zeros_like(self.exchange_trials)

    # ------------------------------------------------------------------------------------------ state
    def _view(self, a: np.ndarray, *tail) -> np.ndarray:
        v = a.reshape(self.batch_shape + tail).view()
        v.flags.writeable = False
        return v

    @property
    def occupation(self) -> np.ndarray:
        return self._view(self._occ, self.lattice.n_sites)

    @property
    def energies(self) -> np.ndarray:
        return self._view(self._energy)

    @property
    def temperatures(self) -> np.ndarray:
        return self._view(self._kT)

    @property
    def walkers(self) -> np.ndarray:
        return self._view(self._walkers)

    @property
    def acceptance(self) -> np.ndarray:
        """Fraction of accepted swaps per chain slot since the start."""
        return self._view(self._accepted / max(self.steps, 1))

    def set_temperatures(self, temperatures) -> None:
        """New :math:`k_BT` for the chains (broadcast to the batch shape)."""
        kT = check_temperatures("temperatures", temperatures)
        try:
            kT = np.broadcast_to(kT, self.batch_shape)
        except ValueError:
            raise ValueError(f"temperatures: shape {kT.shape} does not broadcast to the batch shape "
                             f"{self.batch_shape}") from None
        self._kT = kT.reshape(-1).copy()
        self._beta = 1.0 / self._kT

    def refresh_energies(self) -> float:
        """Recompute the energies from scratch (clearing accumulated rounding); returns the largest drift."""
        fresh = self._checked_energies()
        drift = float(np.abs(fresh - self._energy).max())
        self._energy = fresh
        return drift

    def _checked_energies(self) -> np.ndarray:
        energies = np.array(self.model.energies(self._occ), dtype=np.float64).reshape(len(self._occ))
        bad = np.flatnonzero(~np.isfinite(energies))
        if bad.size:
            raise FloatingPointError(f"model: energy {energies[bad[0]]} for chain {int(bad[0])}")
        return energies

    def _init_species_lists(self) -> None:
        """Per chain and species, the sites holding it: ``_lists[b, s, :counts[b, s]]``."""
        occ, S = self._occ, self.model.n_species
        counts = np.stack([(occ == s).sum(1) for s in range(S)], axis=1)
        starts = np.cumsum(counts, axis=1) - counts
        width = int(counts.max())
        order = np.argsort(occ, axis=1, kind="stable")
        at = np.minimum(starts[:, :, None] + np.arange(width), occ.shape[1] - 1)
        self._lists = np.ascontiguousarray(np.take_along_axis(order[:, None, :], at, axis=2))  # (B, S, width)
        self._counts = counts.astype(np.float64)
        pairs = [(s, t) for s in range(S) for t in range(s + 1, S)]
        self._pair_s, self._pair_t = (np.array(p, dtype=np.intp) for p in zip(*pairs))
        weight = counts[:, self._pair_s] * counts[:, self._pair_t]
        empty = np.flatnonzero(weight.sum(1) == 0)
        if empty.size:
            raise ValueError(f"occupation: chain {int(empty[0])} holds a single species; a canonical swap "
                             f"needs at least two")
        self._pair_cum = np.cumsum(weight, axis=1) / weight.sum(1, keepdims=True)

    # ------------------------------------------------------------------------------------------ moves
    def step(self, n: int = 1) -> None:
        """``n`` trial swaps in every chain (one per chain per step)."""
        n = checks.integer("n", n, low=0)
        while n > 0:
            m = min(n, RANDOM_BLOCK)
            u = self.rng.random((m, 3, len(self._occ)))
            x = self.rng.standard_exponential((m, len(self._occ)))
            if self._state is not None and self._state.compiled:
                self._state.run(u, x, self._occ, self._lists, self._counts, self._pair_cum, self._pair_s,
                                self._pair_t, self._beta, self._energy, self._accepted)
            else:
                for k in range(m):
                    self._trial(u[k], x[k])
            n -= m
            self.steps += m

    def sweep(self, n: int = 1) -> None:
        """``n`` sweeps: ``n * n_sites`` trial swaps per chain."""
        self.step(checks.integer("n", n, low=0) * self.lattice.n_sites)

    def _trial(self, u: np.ndarray, x: np.ndarray) -> None:
        """One proposed swap per chain from uniforms ``u (3, B)`` and exponentials ``x (B,)``."""
        S, width = self._lists.shape[1:]
        if S == 2:
            s, t = 0, 1
        else:
            p = (u[2][:, None] > self._pair_cum).sum(1)
            s, t = self._pair_s[p], self._pair_t[p]
        row = self._rows * S
        slot_i = (row + s) * width + (u[0] * self._counts.reshape(-1)[row + s]).astype(np.intp)
        slot_j = (row + t) * width + (u[1] * self._counts.reshape(-1)[row + t]).astype(np.intp)
        lists = self._lists.reshape(-1)
        i, j = lists[slot_i], lists[slot_j]
        state = self._state
        delta = self.model.swap_deltas(self._occ, i, j) if state is None else state.deltas(self._occ, i, j)
        accept = delta * self._beta < x
        if not np.isfinite(delta).all():
            b = int(np.flatnonzero(~np.isfinite(delta))[0])
            raise FloatingPointError(f"model: swap_deltas gave {delta[b]} for chain {b} (sites {i[b]}, {j[b]})")
        if accept.any():
            r = np.flatnonzero(accept)
            ir, jr = i[r], j[r]
            occ, n_sites = self._occ.reshape(-1), self._occ.shape[1]
            at_i, at_j = r * n_sites + ir, r * n_sites + jr
            occ[at_i], occ[at_j] = occ[at_j], occ[at_i]
            lists[slot_i[r]], lists[slot_j[r]] = jr, ir
            self._energy[r] += delta[r]
            self._accepted[r] += 1
            if state is not None:
                state.accept(r)

    # -------------------------------------------------------------------------------- replica exchange
    def exchange(self) -> np.ndarray:
        """One round of replica exchange along the last batch axis (even pairs, then odd pairs on the next
        call); returns the accepted mask of the pairs tried."""
        shape = self.batch_shape
        if len(shape) == 0 or shape[-1] < 2:
            raise ValueError(f"exchange: needs at least 2 temperatures along the last batch axis, "
                             f"batch shape is {shape}")
        perm, accepted = exchange_permutation(self._energy.reshape(shape), self._kT.reshape(shape),
                                              self.rng, self._parity)
        pairs = np.arange(self._parity, shape[-1] - 1, 2)
        self.exchange_trials[pairs] += int(np.prod(shape[:-1]))
        self.exchange_accepted[pairs] += accepted.reshape(-1, len(pairs)).sum(0) if len(pairs) else 0
        self._parity ^= 1
        n = shape[-1]
        source = (np.arange(self._rows.size).reshape(-1, n)[:, :1] + perm.reshape(-1, n)).reshape(-1)
        for name in ("_occ", "_energy", "_lists", "_counts", "_pair_cum", "_walkers"):
            setattr(self, name, np.ascontiguousarray(getattr(self, name)[source]))  # flat views stay views
        if self._state is not None:
            self._state.reorder(source)
        return accepted

    # ------------------------------------------------------------------------------------ measurements
    def sample(self, sweeps: int, every: int = 1,
               observables: Mapping[str, Callable[[np.ndarray], np.ndarray]] | None = None,
               exchange_every: int = 0) -> dict[str, np.ndarray]:
        """Run ``sweeps`` sweeps, recording the energy and ``observables`` every ``every`` sweeps.

        Parameters
        ----------
        observables : dict, optional
            ``name -> f(occupation)``, ``occupation (B, n_sites) -> (B, ...)``, e.g. an order parameter.
        exchange_every : int
            Replica exchange after every ``exchange_every`` sweeps (0: never).

        Returns
        -------
        dict
            ``"energy"`` and each observable, shape ``(sweeps // every, *batch_shape, ...)``.
        """
        sweeps = checks.integer("sweeps", sweeps, low=0)
        every = checks.integer("every", every, low=1)
        exchange_every = checks.integer("exchange_every", exchange_every, low=0)
        observables = dict(observables or {})
        for name, f in observables.items():
            if not callable(f):
                raise TypeError(f"observables: {name!r} is not callable")
        records = {"energy": [], **{name: [] for name in observables}}
        for k in range(1, sweeps + 1):
            self.sweep()
            if exchange_every and k % exchange_every == 0:
                self.exchange()
            if k % every == 0:
                records["energy"].append(self._energy.copy())
                for name, f in observables.items():
                    records[name].append(np.asarray(f(self._occ)))
        return {name: self._series(values) for name, values in records.items()}

    def _series(self, values: list) -> np.ndarray:
        """Records ``[(B, ...)] * n`` as one array ``(n, *batch_shape, ...)``."""
        if not values:
            return np.zeros((0,) + self.batch_shape)
        stacked = np.array(values)
        return stacked.reshape((len(values),) + self.batch_shape + stacked.shape[2:])

    def anneal(self, schedule, sweeps: int = 1) -> np.ndarray:
        """Simulated annealing: ``sweeps`` sweeps at each :math:`k_BT` of ``schedule`` in turn.

        ``schedule`` has shape ``(stages,)`` or ``(stages, *batch_shape)``; returns the energies after
        each stage, ``(stages, *batch_shape)`` [Kirkpatrick, Gelatt & Vecchi 1983, Science 220, 671].
        """
        kT = check_temperatures("schedule", schedule)
        if kT.ndim < 1:
            raise ValueError(f"schedule: expected a sequence of temperatures, got {schedule!r}")
        out = []
        for stage in kT:
            self.set_temperatures(stage)
            self.sweep(sweeps)
            out.append(self.energies.copy())
        return np.array(out)


def exchange_permutation(energies, temperatures, rng: np.random.Generator, parity: int = 0):
    r"""Replica-exchange decision for neighbouring temperatures along the last axis.

    Pairs ``(k, k+1)`` with ``k`` of the given ``parity`` are swapped with probability
    :math:`\min(1, e^{(\beta_k-\beta_{k+1})(E_k-E_{k+1})})`.

    Parameters
    ----------
    energies, temperatures : array_like, shape (..., n)
        Current energy and :math:`k_BT` of each slot (temperatures sorted along the last axis).
    rng : numpy.random.Generator
    parity : {0, 1}
        Even pairs (0-1, 2-3, ...) or odd pairs (1-2, 3-4, ...); alternate them.

    Returns
    -------
    perm : ndarray, shape (..., n)
        Slot ``k`` takes the configuration that was in slot ``perm[..., k]``.
    accepted : ndarray of bool, shape (..., len(range(parity, n - 1, 2)))

    Notes
    -----
    With one temperature per MPI rank: allgather the energies, call this on every rank with generators
    seeded alike (so all ranks draw the same decision), then rank ``k`` receives the configuration of rank
    ``perm[k]`` (a sendrecv with that partner), or, cheaper, the ranks swap temperatures instead.
    """
    E = np.asarray(energies, dtype=np.float64)
    beta = 1.0 / check_temperatures("temperatures", temperatures)
    if E.shape != beta.shape or E.ndim < 1:
        raise ValueError(f"energies: expected the shape of temperatures {beta.shape}, got {E.shape}")
    parity = checks.choice("parity", parity, (0, 1))
    n = E.shape[-1]
    k = np.arange(parity, n - 1, 2)
    log_ratio = (beta[..., k] - beta[..., k + 1]) * (E[..., k] - E[..., k + 1])
    accepted = rng.standard_exponential(log_ratio.shape) > -log_ratio
    perm = np.broadcast_to(np.arange(n), E.shape).copy()
    perm[..., k] = np.where(accepted, k + 1, k)
    perm[..., k + 1] = np.where(accepted, k, k + 1)
    return perm, accepted
