r"""Site environments as indices of a dense table of their energies (per-site models without triplet features).

A :class:`~hpcai.sim.alloy.energy.SiteEnergyModel` without triplet features gives each site an energy that
depends only on the site's species and on how many neighbours of each species each shell holds. That is a
small, discrete set of *environments*: a binary alloy on fcc has :math:`2\cdot 13 = 26` of them with one
shell and :math:`2\cdot 13\cdot 7\cdot 25 = 4550` with three. So the per-site function -- a neural network,
a pair model, anything -- is evaluated once per environment into a table, and a site's energy is
``table[index]`` with the environment index

.. math::
    \mathrm{index} = \sigma + S\sum_{s}\sum_{u\ge 1} c_{s,u}\,P_{s,u},

:math:`\sigma` the site's species, :math:`c_{s,u}` its count of species :math:`u` in shell :math:`s` and
:math:`P` mixed-radix place values (radix :math:`z_s + 1`). The index is *linear* in the counts, so a swap
of :math:`i` (species :math:`a`) and :math:`j` (species :math:`b`) changes it by fixed amounts: :math:`b - a`
at :math:`i`, :math:`a - b` at :math:`j`, and :math:`S(P_{s,b} - P_{s,a})` (or its negative) at every
neighbour of :math:`i` (of :math:`j`) in shell :math:`s`; a site that appears several times (a common
neighbour of :math:`i` and :math:`j`, :math:`i` and :math:`j` next to each other, periodic images in a
small cell) takes the sum. The index is the same number as the site's environment key
(:class:`~hpcai.sim.alloy.memo.EnvironmentKeys` without neighbour-pair fields), so the Monte Carlo's
:class:`~hpcai.sim.alloy.state.SwapState` keeps every chain's indices as keys and prices a trial with
:math:`2 + 2\sum_s z_s` table look-ups and no feature gathering at all; the energy change is exactly the
difference of the tabulated whole-cell energies (the same numbers summed).

This is the on-lattice analogue of compiling a potential into a look-up table; the networks still define
the energy, the table only stops the Monte Carlo from evaluating them twice on the same environment.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["SiteTable", "TABLE_LIMIT"]

TABLE_LIMIT = 1 << 21      # largest table (environments) built; beyond it the model evaluates features instead


class SiteTable:
    """Environment indexing of a lattice's sites for ``n_species`` species (no table values; see the module).

    Attributes
    ----------
    size : int
        Number of environments (table entries), ``n_species * prod((z_s + 1) ** (n_species - 1))``.
    strides : ndarray, shape (n_species, Z)
        ``strides[u, k]``: the index change of a site when one neighbour in its column ``k`` of
        :attr:`Lattice.neighborhood` becomes species ``u`` (0 for species 0).
    """

    def __init__(self, lattice, n_species: int):
        self.lattice, self.n_species = lattice, n_species
        S, place = n_species, n_species
        strides = np.zeros((lattice.n_shells, S), dtype=np.int64)
        for s, z in enumerate(lattice.coordination):
            for u in range(1, S):
                strides[s, u] = place
                place *= z + 1
        self.size = place
        self.shell_strides = strides
        self.strides = np.ascontiguousarray(strides[lattice.shell_of_column].T)            # (S, Z)

    @staticmethod
    def environments(lattice, n_species: int) -> int:
        """The table size for a lattice and species count, without building anything."""
        return n_species * math.prod((z + 1) ** (n_species - 1) for z in lattice.coordination)

    def index(self, occupation: np.ndarray) -> np.ndarray:
        """Environment index of every site of configurations ``(B, n_sites)`` -> ``(B, n_sites)`` int64."""
        nbh, B = self.lattice.neighborhood, len(occupation)
        out = np.empty(occupation.shape, dtype=np.int64)
        step = max(1, (1 << 22) // max(1, nbh.size))
        columns = np.arange(nbh.shape[1])
        for k in range(0, B, step):
            occ = occupation[k:k + step]
            out[k:k + step] = occ + self.strides[occ[:, nbh], columns].sum(-1)
        return out

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Feature rows of every environment, in :meth:`SiteEnergyModel.site_features` column order, and a
        mask of the reachable ones (counts of a shell summing to at most its coordination)."""
        S, shells = self.n_species, self.lattice.n_shells
        index = np.arange(self.size, dtype=np.int64)
        rows = np.zeros((self.size, S * (1 + shells)))
        rows[index, index % S] = 1.0
        valid = np.ones(self.size, dtype=bool)
        for s, z in enumerate(self.lattice.coordination):
            rest = np.full(self.size, float(z))
            for u in range(1, S):
                count = (index // self.shell_strides[s, u]) % (z + 1)
                rows[:, S * (1 + s) + u] = count
                rest -= count
            rows[:, S * (1 + s)] = rest
            valid &= rest >= 0
        return rows, valid

    def changes(self, occupation: np.ndarray, i: np.ndarray, j: np.ndarray):
        """Affected sites ``(B, A)`` of swapping ``i[b] <-> j[b]`` and their index changes, one column per
        appearance (not yet summed over duplicates): ``i``, ``j``, the neighbours of ``i``, of ``j``."""
        nbh, b = self.lattice.neighborhood, np.arange(len(occupation))
        a, c = occupation[b, i].astype(np.intp), occupation[b, j].astype(np.intp)
        step = self.strides[c] - self.strides[a]                                              # (B, Z)
        sites = np.concatenate([i[:, None], j[:, None], nbh[i], nbh[j]], axis=1)
        change = np.concatenate([(c - a)[:, None], (a - c)[:, None], step, -step], axis=1)
        return sites, change


def combine(scratch: np.ndarray, flat: np.ndarray, change: np.ndarray,
            shift: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Per appearance, the summed change of its site over all its appearances, and how many there are.

    ``flat (B, A)`` are row-unique positions in the zeroed ``scratch`` (left zeroed again); the count travels
    in the low ``shift`` bits (fewer than ``2**shift`` appearances, changes below ``2**(63 - shift)``)."""
    np.add.at(scratch, flat, (change << shift) + 1)
    packed = scratch[flat]
    scratch[flat] = 0
    return packed >> shift, packed & ((1 << shift) - 1)
