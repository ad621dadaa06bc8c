r"""Site environments as exact integer keys, and a memo of their energies for the triplet features.

With neighbour-pair (triplet) features (:class:`~hpcai.sim.alloy.energy.SiteEnergyModel` ``triplets > 0``) a
site has far too many possible environments for a dense table (:mod:`hpcai.sim.alloy.local`): about
:math:`2\cdot 10^{14}` for binary fcc with 4 shells and the nearest-neighbour pairs. A Monte Carlo visits only
a small part of them, so the per-site function is *memoised* instead: every feature row is an exact
mixed-radix integer key (:class:`EnvironmentKeys`), and :class:`EnergyMemo` -- an open-addressing hash table
in numpy arrays -- evaluates the function once per key it has not seen, in one batch, and looks up the rest.

A swap of :math:`i` (species :math:`a`) and :math:`j` (species :math:`b`) changes the keys of :math:`i`,
:math:`j` and their neighbours only (:meth:`EnvironmentKeys.changes`): the count fields exactly as in
:mod:`~hpcai.sim.alloy.local` (linear), and the neighbour-pair fields of every site :math:`k` that has
:math:`i` (or :math:`j`) in its first ``triplets`` shells: each pair of :math:`k`'s neighbours that contains
:math:`i` goes from species :math:`(a, \sigma)` to :math:`(b, \sigma)`, :math:`\sigma` the partner's species,
i.e. the key changes by a sum over the partners that is linear in their species (one small product per
neighbour); where the partner is :math:`j` itself the pair goes from :math:`(a, b)` to :math:`(b, a)` and does
not change. The partner sites are tabulated per site (:attr:`EnvironmentKeys.around`), so a trial costs
:math:`2 + 2\sum_s z_s` key changes, :math:`2 z_\mathrm{in} P` partner look-ups (:math:`z_\mathrm{in}`
neighbours in the inner shells, :math:`P` pairs through each) and one memo look-up per affected site; where
the two neighbourhoods overlap, a site listed twice takes both changes (:attr:`EnvironmentKeys.merge`, by
displacement). The Monte Carlo keeps every chain's keys and site energies in a
:class:`~hpcai.sim.alloy.state.SwapState`; the networks run only on keys never seen before, and the energy
change is exactly the difference of the whole-cell energies the model reports (they go through the same memo).
"""
from __future__ import annotations

import numpy as np

__all__ = ["EnergyMemo", "EnvironmentKeys", "MEMO_LIMIT"]

ROWS_PER_CALL = 1 << 18     # feature rows per call of the function (bounds the networks' memory)
MEMO_LIMIT = 1 << 20        # environments a memo keeps (a table of at most 64 MiB at load 1/4); then it starts afresh
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


class EnvironmentKeys:
    """Exact integer keys of a per-site model's feature rows, and the key changes of a swap.

    Fields, in this order (place values growing): the site's species (radix ``S``); per shell ``s`` and species
    ``u >= 1`` the count (radix ``z_s + 1``); per neighbour-pair group ``g`` and species pair ``(t, u) != (0, 0)``
    the pair count (radix ``m_g + 1``, ``m_g`` pairs in the group). Species 0 and pair ``(0, 0)`` are implied.

    Parameters
    ----------
    model : SiteEnergyModel
        Gives the lattice, ``n_species`` and the neighbour-pair groups (``triplets``).

    Attributes
    ----------
    size : int
        Number of possible keys.
    fits : bool
        False where keys would pass :math:`2^{62}` with the appearance count packed in (``count_bits``), or in a
        cell so small that a site is its own neighbour-pair partner; the model then has no memo and evaluates
        features per trial.
    """

    def __init__(self, model):
        lattice, S = model.lattice, model.n_species
        self.lattice, self.n_species, self.n_features = lattice, S, model.n_features
        pairs = lattice.neighbour_pairs(model.triplets)            # the groups the model's features count
        species_pairs = [(t, u) for t in range(S) for u in range(t, S)]
        place = S
        weights = [np.arange(S, dtype=object)]                        # feature column -> place value
        count_place = np.zeros((lattice.n_shells, S), dtype=object)
        for s, z in enumerate(lattice.coordination):
            for u in range(1, S):
                count_place[s, u], place = place, place * (z + 1)
            weights.append(count_place[s])
        pair_place = np.zeros((len(pairs) + 1, S, S), dtype=object)  # last group: padding, all zero
        for g, (_, columns) in enumerate(pairs):
            for t, u in species_pairs:
                if (t, u) != (0, 0):
                    pair_place[g, t, u] = pair_place[g, u, t] = place
                    place *= len(columns) + 1
            weights.append(np.array([pair_place[g, t, u] for t, u in species_pairs], dtype=object))
        self.size = int(place)
        self.count_bits = (2 * lattice.neighborhood.shape[1] + 2).bit_length()    # appearances of a site, packed
        self.fits = self.size < 1 << (62 - self.count_bits)
        if not self.fits:
            return
        self.weights = np.concatenate(weights).astype(np.int64)                               # (n_features,)
        self.strides = np.ascontiguousarray(count_place.astype(np.int64)[lattice.shell_of_column].T)  # (S, Z)
        self.pair_strides = pair_place.astype(np.int64)
        # decoding: every explicit field (place, radix, feature column); per shell / group the implied field
        # (species 0, pair (0, 0)) is its total less the explicit ones
        fields, rests = [], []
        at = S
        for s, z in enumerate(lattice.coordination):
            fields += [(int(count_place[s, u]), z + 1, at + u) for u in range(1, S)]
            rests.append((at, z, range(len(fields) - (S - 1), len(fields))))
            at += S
        for g, (_, columns) in enumerate(pairs):
            explicit = [(t, u) for t, u in species_pairs if (t, u) != (0, 0)]
            fields += [(int(pair_place[g, t, u]), len(columns) + 1, at + 1 + k) for k, (t, u) in enumerate(explicit)]
            rests.append((at, len(columns), range(len(fields) - len(explicit), len(fields))))
            at += 1 + len(explicit)
        self._digit_place, self._digit_radix, self._digit_column = (np.array(v, dtype=np.int64) for v in zip(*fields))
        self._rest_column = np.array([c for c, _, _ in rests], dtype=np.int64)
        self._rest_total = np.array([t for _, t, _ in rests], dtype=np.float64)
        self._rest_of = np.zeros((len(fields), len(rests)), dtype=np.float64)
        for r, (_, _, members) in enumerate(rests):
            self._rest_of[list(members), r] = 1.0
        # neighbour-pair partners of each inner column, and the partner sites seen from every site's neighbours
        nbh = lattice.neighborhood
        doubled = np.concatenate([np.rint(2 * o).astype(np.int64) for o in lattice.offsets])
        self.inverse = np.array([int(np.flatnonzero((doubled == -v).all(1))[0]) for v in doubled])
        inner = int(sum(lattice.coordination[:model.triplets]))
        partners: list = [[] for _ in range(inner)]
        for g, (_, columns) in enumerate(pairs):
            for c1, c2 in columns.tolist():
                partners[c1].append((c2, g))
                partners[c2].append((c1, g))
        width = max((len(p) for p in partners), default=0)
        self.partner_column = np.zeros((inner, width), dtype=np.intp)
        self.partner_group = np.full((inner, width), len(pairs), dtype=np.intp)
        for c, row in enumerate(partners):
            for m, (c2, g) in enumerate(row):
                self.partner_column[c, m], self.partner_group[c, m] = c2, g
        self.inner = inner
        own = self.inverse[:inner]                                   # the column of k holding i, k = nbh[i, q]
        self.around = nbh[nbh[:, :inner]][:, np.arange(inner)[:, None], self.partner_column[own]]  # (N, inner, P)
        self.partner_groups = self.partner_group[own]            # (inner, P): the group of each entry of around
        self._group = self.partner_groups
        self.around = np.ascontiguousarray(self.around.reshape(lattice.n_sites, -1))              # (N, inner * P)
        # a neighbour k of i, i going a -> c, partners' species unchanged: k's key changes by
        # sum_g m_kg D[g, a, c, 0] + sum_g sum_{u >= 1} n_kgu (D[g, a, c, u] - D[g, a, c, 0]),
        # D[g, a, c, u] = place(g, c, u) - place(g, a, u), m_kg partners in group g, n_kgu of them of species u
        G, P = len(pairs), width
        ps = self.pair_strides[:G]
        D = ps[:, None, :, :] - ps[:, :, None, :]                                                # (G, a, c, u)
        members = np.zeros((inner, P, G + 1), dtype=np.int64)
        members[np.arange(inner)[:, None], np.arange(P), self._group] = 1
        self._base = np.einsum("qg,gac->acq", members.sum(1)[:, :G], D[..., 0])                # (S, S, inner)
        extra = np.zeros((S, S, S - 1, G + 1), dtype=np.int64)                                   # padding group: 0
        extra[..., :G] = (D[..., 1:] - D[..., :1]).transpose(1, 2, 3, 0)
        self._extra = extra[..., self._group.reshape(-1)]                                        # (S, S, S-1, inner*P)
        self._binary = self._extra[0, 1, 0].reshape(inner, P)
        self._width = P
        m = 2 * lattice.size
        self._xyz = lattice.doubled_coordinates.astype(np.intp)
        self.repeated = any(len(set(row)) < len(row) for row in nbh.tolist())
        reach = (self._xyz[self.around[0]] - self._xyz[0]) % m                 # partner displacements (Bravais)
        self._reach = np.zeros(m ** 3, dtype=bool)
        self._reach[(reach[:, 0] * m + reach[:, 1]) * m + reach[:, 2]] = True
        if (self.around == np.arange(lattice.n_sites)[:, None]).any():
            self.fits = False                         # a site its own neighbour-pair partner: not in any cell tried
            return
        # per displacement j - i: where each of j's affected sites [j, nbh[j]] sits among i's [i, nbh[i]]
        # (Z + 1: nowhere), so duplicates merge without a scatter-add (no neighbourhood lists a site twice)
        Z1 = nbh.shape[1] + 1
        self.merge = np.full(m ** 3, Z1, dtype=np.intp)[:, None].repeat(Z1, 1) if not self.repeated else None
        if self.merge is not None:
            first = np.concatenate([[0], nbh[0]])
            where = np.full(lattice.n_sites, Z1, dtype=np.intp)
            where[first] = np.arange(Z1)
            groups = np.concatenate([np.arange(lattice.n_sites)[:, None], nbh], axis=1)      # [j, nbh[j]] for j
            self.merge[self.code(np.zeros(lattice.n_sites, dtype=np.intp), np.arange(lattice.n_sites))] = where[groups]

    def encode(self, features: np.ndarray) -> np.ndarray:
        """Keys ``(...)`` of feature rows ``(..., n_features)`` (exact small integers)."""
        return np.rint(features).astype(np.int64) @ self.weights

    def decode(self, keys: np.ndarray) -> np.ndarray:
        """Feature rows ``(M, n_features)`` float64 of keys ``(M,)``: the inverse of :meth:`encode`."""
        keys = np.asarray(keys, dtype=np.int64)
        digits = (keys[:, None] // self._digit_place) % self._digit_radix                    # (M, fields)
        out = np.zeros((len(keys), self.n_features))
        out[np.arange(len(keys)), keys % self.n_species] = 1.0
        out[:, self._digit_column] = digits
        out[:, self._rest_column] = self._rest_total - digits @ self._rest_of                # the implied field
        return out

    def changes(self, occupation: np.ndarray, i: np.ndarray, j: np.ndarray):
        """Affected sites ``(B, A)`` of swapping ``i[b] <-> j[b]`` and their key changes, one column per
        appearance (not yet summed over duplicates): ``i``, the neighbours of ``i``, ``j``, those of ``j``."""
        nbh, b = self.lattice.neighborhood, np.arange(len(occupation))
        a, c = occupation[b, i].astype(np.intp), occupation[b, j].astype(np.intp)
        if self.n_species == 2:
            step_i = (c - a)[:, None] * self.strides[1]                                       # (B, Z)
        else:
            step_i = self.strides[c] - self.strides[a]
        step_j = -step_i
        if self.inner:
            flat, offset = occupation.reshape(-1), (b * occupation.shape[1])[:, None]
            binary = self.n_species == 2
            close = np.flatnonzero(self._reach[self.code(i, j)])   # rows where j is a partner of i's neighbours
            for own, new, site, other, acc in ((a, c, i, j, step_i), (c, a, j, i, step_j)):
                partner = np.take(self.around, site, axis=0)                                  # (B, inner*P)
                species = flat[partner + offset]
                acc[:, :self.inner] += self._base[own, new]
                if binary:                            # D[g, c, a] = -D[g, a, c]: one row of coefficients
                    term = np.einsum("bqm,qm->bq", species.reshape(len(b), self.inner, -1), self._binary)
                    acc[:, :self.inner] += term * (new - own)[:, None]
                else:
                    for u in range(1, self.n_species):
                        term = self._extra[own, new, u - 1] * (species == u)                  # (B, inner*P)
                        acc[:, :self.inner] += term.reshape(len(b), self.inner, -1).sum(-1)
                rows, at = np.nonzero(partner[close] == other[close, None])
                if rows.size:                         # the pair (i, j) itself: species (a, c) -> (c, a), no change
                    rows, q = close[rows], at // self._width
                    g, o, w = self._group[q, at % self._width], own[rows], new[rows]
                    np.add.at(acc, (rows, q), self.pair_strides[g, o, w] - self.pair_strides[g, w, w])
        sites = np.concatenate([i[:, None], np.take(nbh, i, axis=0), j[:, None], np.take(nbh, j, axis=0)], axis=1)
        change = np.concatenate([(c - a)[:, None], step_i, (a - c)[:, None], step_j], axis=1)
        return sites, change

    def code(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """The displacement from ``i`` to ``j`` (doubled coordinates, wrapped into the cell) as one integer."""
        m = 2 * self.lattice.size
        d = (self._xyz[j] - self._xyz[i]) % m
        return (d[:, 0] * m + d[:, 1]) * m + d[:, 2]


class EnergyMemo:
    """Site energies of environment keys, each computed once: ``function(decode(keys))`` on the keys not seen
    yet, in one batch; an open-addressing hash table (linear probing, load at most 1/4) in numpy arrays.

    ``limit`` bounds the entries; when a batch would pass it the memo starts afresh (the values are recomputed
    on demand, so nothing but time is lost)."""

    def __init__(self, function, decode, limit: int = MEMO_LIMIT):
        self.function, self.decode, self.limit = function, decode, limit
        self.evaluated = 0            # rows given to function so far (misses)
        self._allocate(1 << 12)

    def _allocate(self, capacity: int) -> None:
        self._table = np.full((capacity, 2), -1, dtype=np.int64)    # key and value side by side: one cache line
        self._keys, self._values = self._table[:, 0], self._table[:, 1].view(np.float64)
        self._shift = np.uint64(64 - capacity.bit_length() + 1)
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def _slots(self, keys: np.ndarray) -> np.ndarray:
        h = np.ascontiguousarray(keys).view(np.uint64) * _GOLDEN      # Fibonacci hashing: the top bits
        h >>= self._shift
        return h.view(np.intp)

    def _find(self, keys: np.ndarray):
        """Slots of ``keys`` (1-d), and a mask of those found."""
        slot = self._slots(keys)
        stored = self._keys[slot]
        found = stored == keys
        if found.all():
            return slot, found
        pending = np.flatnonzero(~found & (stored != -1))
        mask = len(self._keys) - 1
        while pending.size:
            stored = self._keys[slot[pending]]
            hit = stored == keys[pending]
            found[pending[hit]] = True
            pending = pending[~hit & (stored != -1)]
            slot[pending] = (slot[pending] + 1) & mask
        return slot, found

    def _insert(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Place new, distinct ``keys``: per round, the first key wanting a free slot takes it, the rest probe on."""
        slot, mask, pending = self._slots(keys), len(self._keys) - 1, np.arange(len(keys))
        while pending.size:
            free = self._keys[slot[pending]] == -1
            _, first = np.unique(slot[pending[free]], return_index=True)
            won = pending[free][first]
            self._keys[slot[won]], self._values[slot[won]] = keys[won], values[won]
            taken = np.ones(len(pending), dtype=bool)
            taken[np.flatnonzero(free)[first]] = False
            pending = pending[taken]
            slot[pending] = (slot[pending] + 1) & mask
        self.count += len(keys)

    def __call__(self, keys: np.ndarray) -> np.ndarray:
        """Site energies of ``keys`` (any shape), float64."""
        flat = np.ascontiguousarray(keys, dtype=np.int64).reshape(-1)
        entry = np.take(self._table, self._slots(flat), axis=0)   # most keys sit at their home slot: one gather
        out = entry[:, 1].view(np.float64)
        rest = np.flatnonzero(entry[:, 0] != flat)
        if rest.size:
            slot, found = self._find(flat[rest])
            out[rest[found]] = self._values[slot[found]]
            missing = rest[~found]
            if missing.size:
                self._add(flat, missing, out)
        return out.reshape(np.shape(keys))              # a strided view of the gathered entries

    def _add(self, flat: np.ndarray, missing: np.ndarray, out: np.ndarray) -> None:
        """Evaluate the keys ``flat[missing]`` (each distinct one once), fill ``out`` and remember them."""
        new, inverse = np.unique(flat[missing], return_inverse=True)
        values = np.concatenate([np.asarray(self.function(self.decode(new[k:k + ROWS_PER_CALL])), dtype=np.float64)
                                 .reshape(-1) for k in range(0, len(new), ROWS_PER_CALL)])
        self.evaluated += len(new)
        out[missing] = values[inverse]
        if self.count + len(new) > self.limit:
            self._allocate(len(self._keys))
        if len(new) <= self.limit:
            while 4 * (self.count + len(new)) > len(self._keys):
                kept = self._keys != -1
                old_keys, old_values = self._keys[kept], self._values[kept]
                self._allocate(2 * len(self._keys))
                self._insert(old_keys, old_values)
            self._insert(new, values)
