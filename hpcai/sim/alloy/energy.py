r"""Energy models for lattice Monte Carlo: the protocol, per-site models with local swap energies, pair model.

The protocol
------------
:class:`EnergyModel` is everything :class:`~hpcai.sim.alloy.montecarlo.MonteCarlo` asks of an energy. A
model has ``lattice`` (a :class:`~hpcai.sim.alloy.lattice.Lattice`), ``n_species`` and two methods, both
on a *batch* of configurations ``occupation`` of shape ``(B, n_sites)`` (int8, species
``0 .. n_species - 1``, C-contiguous; a model must not modify it). The MC stops with a
``FloatingPointError`` naming the chain if either returns NaN or infinity.

``energies(occupation) -> (B,) float64``
    Total energy of each configuration (the whole periodic cell), in the model's energy unit. The MC's
    temperatures are :math:`k_B T` in the same unit; for ASE references the unit is eV.
``swap_deltas(occupation, i, j) -> (B,) float64``
    :math:`E(\text{row } b \text{ with sites } i_b, j_b \text{ swapped}) - E(\text{row } b)` for one
    proposed swap per row; ``i, j`` are ``(B,)`` intp site indices with ``i != j``. The MC only proposes
    unlike pairs, but a like pair must give 0. A local model computes this from the sites whose energy
    can change, so its cost does not grow with the cell; :func:`swap_delta_mismatch` checks it against
    ``energies``.

Per-site models
---------------
:class:`SiteEnergyModel` is the generic local model: :math:`E = \sum_i \varepsilon(\mathbf x_i)` with the
feature row :math:`\mathbf x_i` of site :math:`i` made of the one-hot species of :math:`i` followed by the
count of each species in each neighbour shell (``n_species * (1 + shells)`` numbers, see
:meth:`SiteEnergyModel.site_features`). Only ``function`` -- per-site energies of a batch of feature
rows -- is model-specific; the swap delta is derived once here: a swap changes the features of
:math:`i`, :math:`j` and their neighbours only, so those sites are re-evaluated (each once) before and
after. A neural surrogate needs nothing more than that function. Without triplet features a site has few
distinct environments, so by default ``function`` is evaluated once per environment into a table and the
environment's key is its table index (:mod:`hpcai.sim.alloy.local`). With triplet features there are too many
environments for a table, so ``function`` is memoised per exact integer key instead (:mod:`hpcai.sim.alloy.memo`).
Either way the Monte Carlo keeps every chain's keys and site energies (:meth:`SiteEnergyModel.swap_state`,
:class:`~hpcai.sim.alloy.state.SwapState`, one mechanism for both): a trial updates the affected keys and looks
them up (table or memo), and ``function`` runs only on environments not met before.

Optional for any model: ``swap_state(occupation)`` returning an object with ``deltas(occupation, i, j)``,
``accept(rows)``, ``reorder(source)``, ``compiled`` and ``run(...)`` (see :class:`~hpcai.sim.alloy.state.SwapState`)
or None; the Monte Carlo then prices trials through it instead of ``swap_deltas``.

:class:`PairModel` (shell-resolved bond energies) is a per-site model with exact, faster shortcuts; for a
binary alloy with nearest-neighbour bonds it is the Ising model (:meth:`PairModel.ising`):

.. math::
    E = \sum_{\langle ij\rangle} e_{\sigma_i\sigma_j}
      = -J\sum_{\langle ij\rangle} s_i s_j - h\sum_i s_i + \text{const},\quad
    J = -V/4,\ V = e_{AA} + e_{BB} - 2e_{AB},\ h = -z(e_{AA} - e_{BB})/4,

with :math:`s = +1` for species 0 (A) and :math:`-1` for species 1 (B) [Ducastelle 1991, ch. 3;
de Fontaine 1979].

References
----------
Ducastelle, F. (1991). Order and Phase Stability in Alloys. North-Holland.
de Fontaine, D. (1979). Configurational thermodynamics of solid solutions. Solid State Phys. 34, 73-274.
Behler, J. and Parrinello, M. (2007). Generalized neural-network representation of high-dimensional
potential-energy surfaces. Phys. Rev. Lett. 98, 146401 (energies as sums of local, per-atom terms).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np

from ... import checks
from .lattice import Lattice, check_occupation
from .local import TABLE_LIMIT, SiteTable, combine
from .memo import EnergyMemo, EnvironmentKeys
from .state import SwapState

__all__ = ["EnergyModel", "IsingCoupling", "PairModel", "SiteEnergyModel", "swap_delta_mismatch"]

ROWS_PER_CALL = 1 << 18  # feature rows per call of a per-site function when whole cells are evaluated


@runtime_checkable
class EnergyModel(Protocol):
    """What the Monte Carlo calls; see the module docstring for the exact contract."""

    lattice: Lattice
    n_species: int

    def energies(self, occupation: np.ndarray) -> np.ndarray:
        """Total energies ``(B,)`` of configurations ``(B, n_sites)``."""

    def swap_deltas(self, occupation: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Energy changes ``(B,)`` of swapping sites ``i[b]`` and ``j[b]`` in row ``b``."""


class SiteEnergyModel:
    r"""Sum of per-site energies, each a function of the site's species and its shells' species counts.

    Parameters
    ----------
    lattice : Lattice
        The cell; its ``n_shells`` shells all enter the features.
    n_species : int
        Number of species (2 for a binary alloy).
    function : callable
        ``function(features) -> energies``: features ``(M, n_features)`` float64 rows (see
        :meth:`site_features`), energies ``(M,)``. Tabulated (below): called once, on every environment.
        Otherwise called on whole cells by :meth:`energies` and on ``2 * B * (2 + 2 * sum(coordination))``
        rows per :meth:`swap_deltas`.
    triplets : int
        0: pair features only (species counts per shell). ``k > 0`` also counts, per species pair, the
        pairs of the site's neighbours in its first ``k`` shells that are neighbours of each other
        (:meth:`Lattice.neighbour_pairs`): three-site clusters, which a cluster expansion has and counts
        alone cannot express (how the neighbours are arranged, not only how many there are).
    tabulate : bool
        Evaluate ``function`` once per distinct environment into a table (:mod:`hpcai.sim.alloy.local`) and
        let the Monte Carlo keep per-chain environment indices (:meth:`swap_state`), so a trial swap is a few
        look-ups. With ``triplets`` (or more than ``TABLE_LIMIT`` environments) the table is a memo filled on
        demand instead (:mod:`hpcai.sim.alloy.memo`: ``function`` runs once per environment met, the Monte
        Carlo keeps per-chain environment keys and site energies). ``function`` must then be a fixed function
        of its rows: after changing it (training), call :meth:`invalidate`.
    """

    def __init__(self, lattice: Lattice, n_species: int, function: Callable[[np.ndarray], np.ndarray],
                 triplets: int = 0, tabulate: bool = True):
        if not isinstance(lattice, Lattice):
            raise TypeError(f"lattice: expected a Lattice, got {type(lattice).__name__}")
        if not callable(function):
            raise TypeError(f"function: expected a callable (features -> site energies), got {function!r}")
        self.lattice = lattice
        self.n_species = checks.integer("n_species", n_species, low=2, high=127)
        self.function = function
        self._shell_matrix = np.eye(lattice.n_shells)[lattice.shell_of_column]   # (Z, shells): column -> shell
        self.triplets = checks.integer("triplets", triplets, low=0, high=lattice.n_shells)
        self._pairs = lattice.neighbour_pairs(self.triplets)
        self._species_pairs = [(t, u) for t in range(self.n_species) for u in range(t, self.n_species)]
        if not isinstance(tabulate, bool):
            raise TypeError(f"tabulate: expected True or False, got {tabulate!r}")
        small = SiteTable.environments(lattice, self.n_species) <= TABLE_LIMIT
        self.site_table_geometry = SiteTable(lattice, self.n_species) if tabulate and small and not triplets else None
        self._site_values = None
        keys = EnvironmentKeys(self) if tabulate else None     # with a table: the keys are its indices
        self.environment_keys = keys if keys is not None and keys.fits else None
        self._memo = None

    @property
    def n_features(self) -> int:
        """Length of a feature row: ``n_species * (1 + lattice.n_shells)``, plus ``n_species (n_species + 1) / 2``
        per neighbour-pair group with ``triplets``."""
        return self.n_species * (1 + self.lattice.n_shells) + len(self._pairs) * len(self._species_pairs)

    @property
    def feature_names(self) -> list[str]:
        """Column names: ``species=t`` (one-hot of the site), then ``shell<s>:count<t>``, then
        ``pairs<s1><s2>@<s>:<t><u>`` (neighbours in shells s1, s2, s-th neighbours of each other, species t, u)."""
        species = range(self.n_species)
        return [f"species={t}" for t in species] + \
            [f"shell{s + 1}:count{t}" for s in range(self.lattice.n_shells) for t in species] + \
            [f"pairs{a + 1}{b + 1}@{s + 1}:{t}{u}" for (a, b, s), _ in self._pairs for t, u in self._species_pairs]

    @property
    def feature_scale(self) -> np.ndarray:
        """The largest value of each column after the species one-hot (a shell's coordination, a group's pair
        count): dividing by it gives fractions."""
        counts = np.repeat(np.asarray(self.lattice.coordination, np.float64), self.n_species)
        pairs = np.repeat([float(len(columns)) for _, columns in self._pairs], len(self._species_pairs))
        return np.concatenate([counts, pairs])

    def site_features(self, occupation) -> np.ndarray:
        """Feature rows of every site, shape ``(..., n_sites, n_features)``, float64.

        Column ``t`` is 1 if the site holds species ``t``; column ``n_species * (1 + s) + t`` counts the
        neighbours of species ``t`` in shell ``s + 1`` (periodic images included); with ``triplets``, the
        neighbour-pair counts follow (see :attr:`feature_names`).
        """
        occupation = check_occupation("occupation", occupation, self.lattice, self.n_species)
        return self._features(occupation, occupation[..., self.lattice.neighborhood])

    def site_energies(self, features: np.ndarray) -> np.ndarray:
        """Per-site energies ``(M,)`` of feature rows ``(M, n_features)`` (calls ``function``)."""
        return np.asarray(self.function(features), dtype=np.float64).reshape(len(features))

    @property
    def tabulated(self) -> bool:
        """Whether energies and swaps go through the environment table (see ``tabulate``)."""
        return self.site_table_geometry is not None

    def site_table(self) -> np.ndarray:
        """The site energy of every environment (:class:`~hpcai.sim.alloy.local.SiteTable` indexing), built
        on first use by one call of ``function`` on the reachable environments; unreachable ones are NaN."""
        if self._site_values is None:
            if self.site_table_geometry is None:
                raise ValueError("tabulate: this model has no environment table (triplet features, too many "
                                 "environments, or tabulate=False)")
            rows, valid = self.site_table_geometry.rows()
            table = np.full(len(rows), np.nan)
            table[valid] = self.site_energies(rows[valid])
            table.setflags(write=False)
            self._site_values = table
        return self._site_values

    def invalidate(self) -> None:
        """Forget the environment table or memo (``function`` changed, e.g. a surrogate was trained)."""
        self._site_values = None
        self._memo = None

    @property
    def memoised(self) -> bool:
        """Whether energies and swaps go through the memo of environment keys (``tabulate`` without a table)."""
        return self.environment_keys is not None and self.site_table_geometry is None

    def memo(self) -> EnergyMemo:
        """The site energy of every environment key met so far (:class:`~hpcai.sim.alloy.memo.EnergyMemo`),
        made on first use; a new one after :meth:`invalidate`."""
        if self._memo is None:
            if not self.memoised:
                raise ValueError("tabulate: this model has no environment memo (a dense table, keys too large, "
                                 "or tabulate=False)")
            self._memo = EnergyMemo(self.site_energies, self.environment_keys.decode)
        return self._memo

    def site_lookup(self):
        """Where site energies of environment keys come from: the table (an array indexed by key) or the memo."""
        return self.site_table() if self.tabulated else self.memo()

    def site_keys(self, occupation: np.ndarray) -> np.ndarray:
        """Environment keys ``(B, n_sites)`` of configurations ``(B, n_sites)`` (:class:`EnvironmentKeys`)."""
        flat = occupation.reshape(-1, self.lattice.n_sites)
        step = max(1, ROWS_PER_CALL // self.lattice.n_sites)
        parts = [self.environment_keys.encode(self._features(occ, occ[:, self.lattice.neighborhood]))
                 for occ in (flat[k:k + step] for k in range(0, len(flat), step))]
        return np.concatenate(parts or [np.zeros((0, self.lattice.n_sites), np.int64)])

    def swap_state(self, occupation: np.ndarray):
        """Per-chain environment keys and site energies for the Monte Carlo
        (:class:`~hpcai.sim.alloy.state.SwapState`, from the table or the memo), or None where the model has
        neither or a subclass computes swaps its own way (overrides ``swap_deltas`` or ``energies``)."""
        if self.environment_keys is None:
            return None
        if self.memoised and (type(self).swap_deltas is not SiteEnergyModel.swap_deltas
                              or type(self).energies is not SiteEnergyModel.energies):
            return None
        if self.tabulated and type(self).swap_deltas not in _TABLE_SWAPS:
            return None
        return SwapState(self, occupation)

    def energies(self, occupation) -> np.ndarray:
        """Total energies ``(...)`` of configurations ``(..., n_sites)``: the sum of the site energies."""
        occupation = check_occupation("occupation", occupation, self.lattice, self.n_species)
        flat = occupation.reshape(-1, self.lattice.n_sites)
        if self.tabulated:
            return self.site_table()[self.site_table_geometry.index(flat)].sum(1).reshape(occupation.shape[:-1])
        if self.memoised:
            return self.memo()(self.site_keys(flat)).sum(1).reshape(occupation.shape[:-1])
        step = max(1, ROWS_PER_CALL // self.lattice.n_sites)
        out = np.concatenate([self._cell_energies(flat[k:k + step]) for k in range(0, len(flat), step)]
                             or [np.zeros(0)])
        return out.reshape(occupation.shape[:-1])

    def _cell_energies(self, occ: np.ndarray) -> np.ndarray:
        rows = self._features(occ, occ[:, self.lattice.neighborhood]).reshape(-1, self.n_features)
        return self.site_energies(rows).reshape(len(occ), -1).sum(1)

    def swap_deltas(self, occupation: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Energy change of swapping ``i[b] <-> j[b]`` in each row, from the sites it affects only.

        The affected sites are ``i``, ``j`` and their neighbours in every shell; each is counted once
        (sorted, duplicates weighted 0) and its energy evaluated with the old and the swapped species; with the
        environment table, the same sites' old and new table entries instead.
        """
        if self.tabulated:
            return self._table_swap_deltas(occupation, i, j)
        nbh, b = self.lattice.neighborhood, np.arange(len(occupation))
        affected = np.sort(np.concatenate([i[:, None], j[:, None], nbh[i], nbh[j]], axis=1), axis=1)  # (B, A)
        once = np.ones(affected.shape, dtype=bool)
        once[:, 1:] = affected[:, 1:] != affected[:, :-1]
        around = nbh[affected]                                                                # (B, A, Z)
        own, neigh = occupation[b[:, None], affected], occupation[b[:, None, None], around]
        si, sj = occupation[b, i], occupation[b, j]
        features = self._features(np.stack([own, _swapped(own, affected, i, j, si, sj)]),
                                  np.stack([neigh, _swapped(neigh, around, i, j, si, sj)]))
        rows = features.reshape(-1, self.n_features)
        e = (self.memo()(self.environment_keys.encode(rows)) if self.memoised
             else self.site_energies(rows)).reshape(2, *affected.shape)
        return ((e[1] - e[0]) * once).sum(1)

    def _table_swap_deltas(self, occupation: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """:meth:`swap_deltas` by the table: the affected sites' indices from their neighbourhoods, then the
        same look-ups as :meth:`SwapState.deltas` (without a state to keep)."""
        geometry, n = self.site_table_geometry, self.lattice.n_sites
        sites, change = geometry.changes(occupation, i, j)
        rows = np.arange(len(sites))[:, None]
        columns = np.arange(self.lattice.neighborhood.shape[1])
        old = occupation[rows, sites] + geometry.strides[occupation[rows[..., None], self.lattice.neighborhood[sites]],
                                                         columns].sum(-1)
        total, count = combine(np.zeros(len(sites) * n, dtype=np.int64), sites + rows * n, change)
        table = self.site_table()
        return ((table[old + total] - table[old]) / count).sum(1)

    def _features(self, own: np.ndarray, neigh: np.ndarray) -> np.ndarray:
        """Feature rows from each site's species ``own (...)`` and its neighbours' species ``neigh (..., Z)``."""
        S, k = self.n_species, self.lattice.n_shells
        out = np.empty(own.shape + (self.n_features,))
        rows = neigh.reshape(-1, neigh.shape[-1])
        for t in range(S):
            out[..., t] = own == t
            counts = (rows == t).astype(np.float64) @ self._shell_matrix          # per-shell sums, one GEMM
            out[..., S + t:S * (1 + k):S] = counts.reshape(own.shape + (k,))
        at = S * (1 + k)
        for _, columns in self._pairs:
            a, b = neigh[..., columns[:, 0]], neigh[..., columns[:, 1]]
            for t, u in self._species_pairs:
                hits = (a == t) & (b == u) if t == u else ((a == t) & (b == u)) | ((a == u) & (b == t))
                out[..., at] = hits.sum(-1)
                at += 1
        return out


def _swapped(species, sites, i, j, si, sj):
    """``species`` found at ``sites`` once ``i`` and ``j`` (old species ``si``, ``sj``) swap, row by row."""
    i, j, si, sj = (a.reshape((-1,) + (1,) * (sites.ndim - 1)) for a in (i, j, si, sj))
    return np.where(sites == i, sj, np.where(sites == j, si, species))


@dataclasses.dataclass(frozen=True)
class IsingCoupling:
    r"""Ising form of a binary pair model: :math:`E = -\sum_s J_s\sum_{\langle ij\rangle_s}s_is_j - h\sum_i s_i
    + \text{constant}`, with :math:`s = +1` for species 0 and bonds of shell ``s`` counted once."""

    J: np.ndarray
    h: float
    constant: float


class PairModel(SiteEnergyModel):
    r"""Shell-resolved pair (bond) energies: :math:`E = \sum_s\sum_{\langle ij\rangle_s} e^{(s)}_{\sigma_i\sigma_j}`.

    Parameters
    ----------
    lattice : Lattice
        Must tabulate at least as many shells as ``interactions`` has.
    interactions : array_like, shape (n_species, n_species) or (shells, n_species, n_species)
        Symmetric bond energies per shell; ``[[e_AA, e_AB], [e_AB, e_BB]]`` for a binary nearest-neighbour
        model (see :meth:`from_bonds`).

    As a :class:`SiteEnergyModel` its site energy is half the site's bond energies; ``energies`` and
    ``swap_deltas`` are exact shortcuts of the generic route (same numbers, fewer operations).
    """

    def __init__(self, lattice: Lattice, interactions):
        eps = np.array(interactions, dtype=np.float64)
        eps = eps[None] if eps.ndim == 2 else eps
        checks.array("interactions", eps, ndim=3, kinds="f", finite=True)
        shells, S, S2 = eps.shape
        if S != S2 or S < 2 or not np.array_equal(eps, eps.transpose(0, 2, 1)):
            raise ValueError(f"interactions: expected symmetric (n_species, n_species) bond energies per shell, "
                             f"n_species >= 2, got shape {eps.shape}"
                             + ("" if S != S2 or S < 2 else " (not symmetric)"))
        if shells > lattice.n_shells:
            raise ValueError(f"interactions: {shells} shells given but {lattice!r} tabulates "
                             f"{lattice.n_shells}; build it with Lattice(..., shells={shells})")
        self.interactions = np.zeros((lattice.n_shells, S, S))
        self.interactions[:shells] = eps
        self.interactions.setflags(write=False)
        super().__init__(lattice, S, self._pair_site_energies)
        self._col = lattice.shell_of_column * S * S               # (Z,): offset of each column's shell table
        self._table = self.interactions.reshape(-1)
        d = np.diagonal(self.interactions, axis1=1, axis2=2)
        self._V = (d[:, :, None] + d[:, None, :] - 2 * self.interactions).reshape(-1)

    @classmethod
    def from_bonds(cls, lattice: Lattice, e_aa: float, e_bb: float, e_ab: float) -> PairModel:
        """Binary nearest-neighbour model from the three bond energies (species 0 = A, 1 = B)."""
        e_aa, e_bb, e_ab = (checks.number(n, v) for n, v in (("e_aa", e_aa), ("e_bb", e_bb), ("e_ab", e_ab)))
        return cls(lattice, [[e_aa, e_ab], [e_ab, e_bb]])

    @property
    def ordering_energy(self) -> np.ndarray:
        """:math:`V_s = e_{AA} + e_{BB} - 2e_{AB}` per shell (binary); V > 0 favours unlike neighbours."""
        self._require_binary("ordering_energy")
        e = self.interactions
        return e[:, 0, 0] + e[:, 1, 1] - 2 * e[:, 0, 1]

    def ising(self) -> IsingCoupling:
        """The equivalent Ising model (binary only): :math:`J_s = -V_s/4`, :math:`h = -\\sum_s z_s(e_{AA}-e_{BB})/4`,
        constant :math:`N\\sum_s z_s(e_{AA}+e_{BB}+2e_{AB})/8`."""
        self._require_binary("ising")
        e, z = self.interactions, np.array(self.lattice.coordination)
        h = -float((z * (e[:, 0, 0] - e[:, 1, 1])).sum()) / 4
        constant = self.lattice.n_sites * float((z * (e[:, 0, 0] + e[:, 1, 1] + 2 * e[:, 0, 1])).sum()) / 8
        return IsingCoupling(J=-self.ordering_energy / 4, h=h, constant=constant)

    def _require_binary(self, what: str) -> None:
        if self.n_species != 2:
            raise ValueError(f"{what}: defined for a binary alloy, this model has {self.n_species} species")

    def _pair_site_energies(self, features: np.ndarray) -> np.ndarray:
        S = self.n_species
        own, counts = features[:, :S], features[:, S:].reshape(len(features), -1, S)
        return 0.5 * np.einsum("ma,kab,mkb->m", own, self.interactions, counts)

    def _cell_energies(self, occ: np.ndarray) -> np.ndarray:
        pair = (occ[:, :, None].astype(np.intp) * self.n_species + self._col) + occ[:, self.lattice.neighborhood]
        return 0.5 * self._table[pair].sum((1, 2))

    def swap_deltas(self, occupation: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        r"""Exact bond-energy change of the swaps: with :math:`h_i(x) = \sum_{n\in N(i)} e_{x\sigma_n}`
        (old neighbours), :math:`\Delta E = h_i(b) - h_i(a) + h_j(a) - h_j(b) - m_{ij}V_{ab}` per shell,
        where :math:`a, b` are the old species of :math:`i, j` and :math:`m_{ij}` counts :math:`j` among
        the neighbours of :math:`i` (the i-j bond itself does not change). For a binary alloy this is
        :math:`\sum_s V_s[(b-a)(n^s_i-n^s_j) - m^s_{ij}|b-a|]` with :math:`n^s_i` the species-1
        neighbours of :math:`i` in shell :math:`s`."""
        S, nbh, col = self.n_species, self.lattice.neighborhood, self._col
        flat = occupation.reshape(-1)
        base = np.arange(0, flat.size, self.lattice.n_sites)[:, None]   # row offsets into the flat array
        ni, nj = nbh[i], nbh[j]                                          # (B, Z) neighbour sites
        around_i, around_j = flat[ni + base], flat[nj + base]            # (B, Z) their species
        a, b = flat[i[:, None] + base].astype(np.intp), flat[j[:, None] + base].astype(np.intp)
        mutual = ni == j[:, None]                                        # j among i's neighbours
        if S == 2:
            V = self._V[col + 1]                                         # V_s of each column's shell
            change = (b - a)[:, 0]                                       # +1, -1, or 0 for a like pair
            return ((around_i - around_j) @ V) * change - (mutual @ V) * np.abs(change)
        e = self._table                                                  # e[col + x*S + y] = e_xy of the shell
        delta = e[col + b * S + around_i] - e[col + a * S + around_i] + e[col + a * S + around_j] \
            - e[col + b * S + around_j] - mutual * self._V[col + a * S + b]
        return delta.sum(1)


def swap_delta_mismatch(model: EnergyModel, occupation, seed=None) -> float:
    """Largest ``|swap_deltas - (energies(after) - energies(before))|`` over one random unlike swap per row.

    A check for any :class:`EnergyModel` (a surrogate's local energy change against its own whole-cell
    energies); rows with a single species are skipped.
    """
    occupation = check_occupation("occupation", occupation, model.lattice, model.n_species)
    occ = np.ascontiguousarray(occupation.reshape(-1, model.lattice.n_sites))
    rng = np.random.default_rng(seed)
    rows = np.arange(len(occ))
    i = rng.integers(0, occ.shape[1], len(occ))
    unlike = occ != occ[rows, i][:, None]
    keep = unlike.any(1)
    j = np.argmax(np.where(unlike, rng.random(occ.shape), -1.0), axis=1)
    occ, i, j, rows = occ[keep], i[keep], j[keep], rows[:keep.sum()]
    after = occ.copy()
    after[rows, i], after[rows, j] = occ[rows, j], occ[rows, i]
    direct = model.energies(after) - model.energies(occ)
    return float(np.abs(model.swap_deltas(occ, i, j) - direct).max(initial=0.0))


_TABLE_SWAPS = (SiteEnergyModel.swap_deltas, PairModel.swap_deltas)  # swaps a SwapState reproduces
