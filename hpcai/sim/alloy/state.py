r"""Every chain's site environments kept up to date, so a Monte Carlo trial swap prices a few sites, not a cell.

A :class:`~hpcai.sim.alloy.energy.SiteEnergyModel` gives each site an energy that depends only on its
environment, and every environment has an exact integer key (:class:`~hpcai.sim.alloy.memo.EnvironmentKeys`:
the site's species, its shells' species counts and, with triplet features, its neighbour-pair counts, as
mixed-radix digits). A :class:`SwapState` keeps every chain's site keys and site energies. A swap of
:math:`i` (species :math:`a`) and :math:`j` (species :math:`b`) changes the keys of :math:`i`, :math:`j` and
their neighbours only, by amounts linear in the species involved (:meth:`EnvironmentKeys.changes`); a site met
twice (a common neighbour, :math:`i` next to :math:`j`, periodic images in a small cell) takes the sum of its
changes. The new keys' energies come from one of two look-ups, the *only* difference between the model kinds:

* a dense **table** (counts only: few environments, every one evaluated once, :mod:`hpcai.sim.alloy.local`;
  the key *is* the table index), or
* a **memo** (triplet features: far too many environments for a table; each evaluated when first met,
  :class:`~hpcai.sim.alloy.memo.EnergyMemo`).

The energy change is the sum of the affected sites' new minus old energies -- exactly the difference of the
whole-cell energies the model reports, which go through the same look-up.

Two paths run the trials, with the same random numbers and the same decisions:

* numpy (:meth:`SwapState.deltas`, :meth:`SwapState.accept`): one trial in every chain per step, a few dozen
  array passes shared by all chains -- the reference;
* compiled (:meth:`SwapState.run`, a :func:`hpcai.accel.jit` kernel, where numba is installed): whole blocks of
  trials chain by chain, each a few hundred scalar operations. numpy cannot get there: one chain pays the
  per-call overhead of every array pass (about 40 per trial), which is what kept a single chain of the triplet
  surrogate below 10^4 x one EMT energy. A trial that meets an environment the memo lacks stops its chain;
  the networks then run on all such environments at once and the chains resume from that trial.
"""
from __future__ import annotations

import numpy as np

from ... import accel
from .local import combine
from .memo import EnergyMemo

__all__ = ["SwapState"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)     # the memo's Fibonacci hashing (EnergyMemo._slots)
_DONE, _MISS, _NONFINITE = 0, 1, 2


class SwapState:
    """Every chain's environment keys and site energies, kept up to date on accepted swaps.

    Made by :meth:`SiteEnergyModel.swap_state`; :class:`~hpcai.sim.alloy.MonteCarlo` prices trials through it
    instead of ``swap_deltas``: :meth:`deltas` prices one trial swap per chain, :meth:`accept` commits the
    ones taken, :meth:`reorder` follows replica exchange; :meth:`run` runs whole blocks of trials compiled
    (where :attr:`compiled`).

    Attributes
    ----------
    keys : ndarray (B, n_sites) int64
        Every site's environment key (with a table: its table index).
    energy : ndarray (B, n_sites) float64
        Every site's energy.
    """

    def __init__(self, model, occupation: np.ndarray):
        self.model, self.geometry = model, model.environment_keys
        self.keys = model.site_keys(occupation)                                               # (B, N)
        self._lookup = model.site_lookup()
        self.energy = self._values(self.keys)                                                 # (B, N)
        self._scratch = np.zeros(self.keys.size, dtype=np.int64)
        self._pending = None

    @property
    def table(self) -> bool:
        """Whether the site energies come from a dense table (else from a memo)."""
        return not isinstance(self._lookup, EnergyMemo)

    def _values(self, keys: np.ndarray) -> np.ndarray:
        if isinstance(self._lookup, EnergyMemo):
            return self._lookup(keys)
        return np.take(self._lookup, keys)

    def _current(self) -> None:
        lookup = self.model.site_lookup()
        if lookup is not self._lookup:                   # the function changed (invalidate): new site energies
            self._lookup = lookup
            self.energy = self._values(self.keys)

    # ---------------------------------------------------------------------------------------- numpy path
    def deltas(self, occupation: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Energy change of swapping ``i[b] <-> j[b]`` in every chain ``b`` of ``occupation`` (the state's
        configurations); remembers the new keys and site energies for :meth:`accept`."""
        self._current()
        geometry = self.geometry
        sites, change = geometry.changes(occupation, i, j)
        flat = sites + (np.arange(len(sites)) * self.keys.shape[1])[:, None]
        if geometry.merge is None:                          # periodic images: sum over appearances
            total, count = combine(self._scratch, flat, change, geometry.count_bits)
            new = self.keys.reshape(-1)[flat] + total
            energy = self._values(new)
            self._pending = flat, new, energy
            return ((energy - self.energy.reshape(-1)[flat]) / count).sum(1)
        B, Z1 = len(sites), sites.shape[1] // 2
        where = np.take(geometry.merge, geometry.code(i, j), axis=0)   # (B, Z1): j's appearance among i's, or Z1
        merged = np.zeros((B, Z1 + 1), dtype=np.int64)
        merged[:, :Z1] = change[:, :Z1]
        merged.reshape(-1)[where + (np.arange(B) * (Z1 + 1))[:, None]] += change[:, Z1:]   # unique per row
        twice = where < Z1
        change[:, :Z1] = merged[:, :Z1]
        change[:, Z1:] = np.where(twice, np.take_along_axis(merged, where, 1), change[:, Z1:])
        new = self.keys.reshape(-1)[flat] + change
        energy = self._values(new)
        self._pending = flat, new, energy
        diff = energy - self.energy.reshape(-1)[flat]
        diff[:, Z1:] *= ~twice                              # a site in both lists counts once
        return diff.sum(1)

    def accept(self, rows: np.ndarray) -> None:
        """Commit the last :meth:`deltas` in chains ``rows``."""
        flat, new, energy = self._pending
        self.keys.reshape(-1)[flat[rows]] = new[rows]
        self.energy.reshape(-1)[flat[rows]] = energy[rows]

    def reorder(self, source: np.ndarray) -> None:
        """Chain ``k`` now holds what chain ``source[k]`` held (replica exchange)."""
        self.keys = np.ascontiguousarray(self.keys[source])
        self.energy = np.ascontiguousarray(self.energy[source])

    # ------------------------------------------------------------------------------------- compiled path
    @property
    def compiled(self) -> bool:
        """Whether :meth:`run` may be used (numba installed and not switched off, see :mod:`hpcai.accel`)."""
        return _trials.available

    def run(self, u: np.ndarray, x: np.ndarray, occupation: np.ndarray, lists: np.ndarray, counts: np.ndarray,
            pair_cum: np.ndarray, pair_s: np.ndarray, pair_t: np.ndarray, beta: np.ndarray, energy: np.ndarray,
            accepted: np.ndarray) -> None:
        """Trials ``k = 0 .. m-1`` of every chain, compiled: the Monte Carlo's arrays (uniforms ``u (m, 3, B)``,
        exponentials ``x (m, B)``, ``occupation``, species lists, ...) are updated in place exactly as
        ``m`` calls of its numpy step would (same picks, same Metropolis decisions)."""
        self._current()
        g = self.geometry
        B, N = self.keys.shape
        A = 2 * (1 + g.lattice.neighborhood.shape[1])
        start = np.zeros(B, dtype=np.int64)
        status = np.zeros(B, dtype=np.int64)
        pending = np.zeros((B, A + 3), dtype=np.int64)     # a stopped trial's new keys, their number, sites i, j
        value = np.zeros(B)                                 # a non-finite energy change
        work = np.zeros(N, dtype=np.int64), np.zeros(N, dtype=np.int64), np.zeros(A, dtype=np.int64), \
            np.zeros(A, dtype=np.int64), np.zeros(A), np.zeros(A, dtype=np.int64)
        while True:
            if self.table:
                dense, table, memo = True, self._lookup, np.full((1, 2), -1, dtype=np.int64)
                shift = np.uint64(63)
            else:
                dense, table, memo = False, np.zeros(1), self._lookup._table
                shift = self._lookup._shift
            _trials(start, status, pending, value, u, x, occupation, lists, counts, pair_cum, pair_s, pair_t, beta,
                    energy, accepted, self.keys, self.energy, g.lattice.neighborhood, g.strides, g.inner,
                    g.around, g.partner_groups, g.pair_strides, dense, table, memo, memo.view(np.float64), shift,
                    *work)
            bad = np.flatnonzero(status == _NONFINITE)
            if bad.size:
                b = int(bad[0])
                raise FloatingPointError(f"model: swap_deltas gave {value[b]} for chain {b} "
                                         f"(sites {pending[b, -2]}, {pending[b, -1]})")
            missed = np.flatnonzero(status == _MISS)
            if not missed.size:
                return
            n = pending[missed, -3]                          # affected sites of each stopped trial
            keys = np.concatenate([pending[b, :k] for b, k in zip(missed.tolist(), n.tolist())])
            self._lookup(keys)                               # the networks run on the new environments, once
            status[:] = _DONE


@accel.jit
def _trials(start, status, pending, value, u, x, occ, lists, counts, pair_cum, pair_s, pair_t, beta, energy, accepted,
            keys, site_energy, nbh, strides, inner, around, group, pair_strides, dense, table, memo_keys,
            memo_values, shift, change, mark, touched, new_keys, new_energy, home):
    """The compiled trials of :meth:`SwapState.run`: chain by chain from trial ``start[b]``; a chain whose
    trial needs a key the memo lacks stops there (``status`` 1, ``start`` the trial, ``pending`` its new keys,
    their number in column -3); a non-finite energy change stops it with status 2 (the change in ``value``,
    the sites in columns -2, -1)."""
    m, B = x.shape
    S = lists.shape[1]
    Z = nbh.shape[1]
    P = around.shape[1] // inner if inner > 0 else 0
    mask = memo_keys.shape[0] - 1
    for b in range(B):
        for k in range(start[b], m):
            if S == 2:
                s, t = 0, 1
            else:
                p = 0
                while p < pair_cum.shape[1] and pair_cum[b, p] < u[k, 2, b]:
                    p += 1
                s, t = pair_s[p], pair_t[p]
            slot_i = int(u[k, 0, b] * counts[b, s])
            slot_j = int(u[k, 1, b] * counts[b, t])
            i, j = lists[b, s, slot_i], lists[b, t, slot_j]
            a, c = np.int64(occ[b, i]), np.int64(occ[b, j])
            n = 0
            for side in range(2):                         # site i goes a -> c, then site j goes c -> a
                site, other, old, now = (i, j, a, c) if side == 0 else (j, i, c, a)
                for q in range(-1, Z):
                    if q < 0:
                        k1, d = site, now - old
                    else:
                        k1, d = nbh[site, q], strides[now, q] - strides[old, q]
                        if q < inner:                     # pairs of k1's neighbours through `site`
                            for r in range(P):
                                partner = around[site, q * P + r]
                                if partner != other:      # the pair (i, j) itself does not change
                                    sigma = np.int64(occ[b, partner])
                                    gr = group[q, r]
                                    d += pair_strides[gr, now, sigma] - pair_strides[gr, old, sigma]
                    if mark[k1] == 0:
                        mark[k1] = 1
                        touched[n] = k1
                        n += 1
                    change[k1] += d
            for r in range(n):
                k1 = touched[r]
                key = keys[b, k1] + change[k1]
                new_keys[r] = key
                if dense:
                    new_energy[r] = table[key]
                else:                                     # home slots first: independent loads overlap
                    slot = np.int64((np.uint64(key) * _GOLDEN) >> shift)
                    home[r] = slot
                    new_energy[r] = memo_values[slot, 1] if memo_keys[slot, 0] == key else np.nan
            delta = 0.0
            missed = False
            for r in range(n):
                e = new_energy[r]
                if not dense and memo_keys[home[r], 0] != new_keys[r]:
                    key, slot = new_keys[r], home[r]
                    while True:                           # linear probing past the home slot
                        stored = memo_keys[slot, 0]
                        if stored == key:
                            e = memo_values[slot, 1]
                            break
                        if stored == -1:
                            missed = True
                            e = 0.0
                            break
                        slot = (slot + 1) & mask
                    new_energy[r] = e
                delta += e - site_energy[b, touched[r]]
            for r in range(n):
                change[touched[r]] = 0
                mark[touched[r]] = 0
            if missed:
                for r in range(n):
                    pending[b, r] = new_keys[r]
                pending[b, pending.shape[1] - 3] = n
                status[b], start[b] = 1, k
                break
            if not np.isfinite(delta):
                pending[b, pending.shape[1] - 2], pending[b, pending.shape[1] - 1] = i, j
                value[b] = delta
                status[b], start[b] = 2, k
                break
            if delta * beta[b] < x[k, b]:
                for r in range(n):
                    keys[b, touched[r]] = new_keys[r]
                    site_energy[b, touched[r]] = new_energy[r]
                occ[b, i], occ[b, j] = occ[b, j], occ[b, i]
                lists[b, s, slot_i], lists[b, t, slot_j] = j, i
                energy[b] += delta
                accepted[b] += 1
        if status[b] == 0:
            start[b] = m
