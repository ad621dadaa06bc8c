r"""Cubic lattices for alloy Monte Carlo: periodic supercells, exact neighbour shells, sublattices, occupations.

A :class:`Lattice` is an ``L x L x L`` supercell of the conventional cubic cell of a Bravais lattice from
:data:`LATTICES` (sc, bcc, fcc), with periodic boundaries. Geometry is kept in *doubled* integer
coordinates (units of :math:`a/2`), so every distance comparison is exact: neighbour shell :math:`s` is the
set of lattice vectors of the :math:`s`-th smallest non-zero length, found by enumeration, and the
neighbours of every site are the sites at those vectors, wrapped into the cell.

Neighbour lists count periodic images: in a cell smaller than twice a shell's radius the same neighbour
can appear more than once (sc with ``L = 2``: each nearest neighbour twice). Energies are then those of
the periodic crystal, which is also what an ASE calculator computes on the same cell. A site that would
be its own neighbour is refused (that cell is too small for the shells asked for).

Configurations are *occupation arrays*: small integers (species ``0 .. n-1``) of shape ``(..., n_sites)``.
Sublattice partitions for the ordered structures in :data:`STRUCTURES` (B2, L1_0, L1_2) feed the
long-range order parameters of :mod:`hpcai.sim.alloy.observables`.

References
----------
Ashcroft, N. W. and Mermin, N. D. (1976). Solid State Physics, ch. 4 (Bravais lattices, conventional cells).
Ducastelle, F. (1991). Order and Phase Stability in Alloys. North-Holland (B2, L1_0, L1_2 sublattices).
"""
from __future__ import annotations

import math

import numpy as np

from ... import checks

__all__ = ["LATTICES", "STRUCTURES", "Lattice", "ordered_occupation", "random_occupation", "species_counts",
           "sublattices"]

#: Bravais lattices as their conventional-cell basis, in doubled coordinates (units of a/2).
LATTICES = {
    "sc": ((0, 0, 0),),
    "bcc": ((0, 0, 0), (1, 1, 1)),
    "fcc": ((0, 0, 0), (1, 1, 0), (1, 0, 1), (0, 1, 1)),
}

SPECIES_DTYPE = np.int8


class Lattice:
    """Periodic ``size^3`` supercell of a cubic Bravais lattice, with its first ``shells`` neighbour shells.

    Parameters
    ----------
    kind : {"sc", "bcc", "fcc"}
        The Bravais lattice (a key of :data:`LATTICES`).
    size : int
        ``L``, conventional cells per edge; the cell has ``len(LATTICES[kind]) * L**3`` sites.
    shells : int, optional
        How many neighbour shells to tabulate (default 1, nearest neighbours).

    Attributes
    ----------
    n_sites : int
    positions : ndarray, shape (n_sites, 3)
        Site positions in units of the lattice constant ``a``; site ``((x*L + y)*L + z)*nb + k`` is basis
        atom ``k`` of conventional cell ``(x, y, z)``.
    shell_distances : ndarray, shape (shells,)
        Shell radii in units of ``a``.
    coordination : tuple of int
        Neighbours per shell (sc 6, 12, 8; bcc 8, 6, 12; fcc 12, 6, 24).
    offsets : tuple of ndarray
        Per shell, the ``(z_s, 3)`` neighbour vectors in units of ``a``.
    neighbors : tuple of ndarray
        Per shell, ``(n_sites, z_s)`` site indices: ``neighbors[s][i, k]`` is site ``i`` displaced by
        ``offsets[s][k]`` (periodic images included, see the module notes).
    """

    def __init__(self, kind: str, size: int, shells: int = 1):
        self.kind = checks.choice("kind", kind, LATTICES)
        self.size = checks.integer("size", size, low=1)
        self.n_shells = checks.integer("shells", shells, low=1, high=20)
        basis = np.array(LATTICES[kind])
        cells = np.stack(np.meshgrid(*3 * [np.arange(size)], indexing="ij"), -1).reshape(-1, 1, 3)
        self._doubled = (2 * cells + basis).reshape(-1, 3)           # site -> doubled integer coordinates
        self.n_basis, self.n_sites = len(basis), len(self._doubled)
        self.positions = self._doubled / 2.0
        index = np.full(3 * (2 * size,), -1, dtype=np.intp)         # doubled coordinates -> site
        index[tuple(self._doubled.T)] = np.arange(self.n_sites)
        vectors, radii2 = _shell_vectors(basis, self.n_shells)
        for s, vec in enumerate(vectors):
            if np.any(np.all(vec % (2 * size) == 0, axis=1)):
                raise ValueError(f"size: L={size} is too small for {self.n_shells} shells of {kind}: a site "
                                 f"would be its own neighbour in shell {s + 1}; use a larger L or fewer shells")
        def at(d):  # index of the site at displacement d from every site, with periodic wrap
            return index[tuple(((self._doubled[:, None, :] + d) % (2 * size)).transpose(2, 0, 1))]
        self.neighbors = tuple(_frozen(at(vec)) for vec in vectors)
        self.offsets = tuple(_frozen(vec / 2.0) for vec in vectors)
        self.shell_distances = _frozen(np.sqrt(radii2) / 2.0)
        self.coordination = tuple(len(vec) for vec in vectors)
        self.neighborhood = _frozen(np.concatenate(self.neighbors, axis=1))
        self.shell_of_column = _frozen(np.repeat(np.arange(self.n_shells), self.coordination))
        self._radii2 = radii2
        _frozen(self.positions)

    def neighbour_pairs(self, inner: int) -> tuple:
        """Pairs of a site's neighbours that are themselves neighbours: the three-site clusters (triangles,
        and bent or straight triplets) through a site, grouped by geometry.

        Returns ``((key, columns), ...)``: ``key = (s1, s2, s)`` -- the two neighbours lie in shells ``s1 <= s2
        < inner`` of the site and are ``s``-th shell neighbours of each other (all 0-based); ``columns`` is
        an ``(m, 2)`` array of column pairs of :attr:`neighborhood`, each unordered pair once. Only
        separations among the tabulated shells count. The same for every site (columns are displacements).
        """
        inner = checks.integer("inner", inner, low=0, high=self.n_shells)
        vec = np.concatenate([2 * v for v in self.offsets[:inner]]).astype(int) if inner else np.zeros((0, 3), int)
        first, second = np.triu_indices(len(vec), k=1)
        d2 = ((vec[first] - vec[second]) ** 2).sum(1)
        shell = np.searchsorted(self._radii2, d2)
        known = (shell < self.n_shells) & (self._radii2[np.minimum(shell, self.n_shells - 1)] == d2)
        groups: dict = {}
        for a, b, s in zip(first[known], second[known], shell[known]):
            key = (int(self.shell_of_column[a]), int(self.shell_of_column[b]), int(s))
            groups.setdefault(key, []).append((a, b))
        return tuple((key, _frozen(np.array(groups[key], dtype=np.intp))) for key in sorted(groups))

    @property
    def doubled_coordinates(self) -> np.ndarray:
        """Site coordinates in units of ``a/2`` (exact integers), shape ``(n_sites, 3)``."""
        return self._doubled

    def __repr__(self) -> str:
        return f"Lattice({self.kind!r}, size={self.size}, shells={self.n_shells}; {self.n_sites} sites)"


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def _shell_vectors(basis: np.ndarray, shells: int):
    """The lattice vectors of the first ``shells`` non-zero lengths (doubled coordinates), and the squared
    lengths. Vectors ``2n + b`` are enumerated for ``|n_i| <= m``, which holds every vector of length
    ``<= 2m``; ``m`` grows until that covers the last shell, so no vector of a shell is missed."""
    m = 1
    while True:
        rng = np.arange(-m, m + 1)
        n = np.stack(np.meshgrid(rng, rng, rng, indexing="ij"), -1).reshape(-1, 1, 3)
        vec = (2 * n + basis).reshape(-1, 3)
        r2 = (vec ** 2).sum(1)
        lengths = np.unique(r2[r2 > 0])[:shells]
        if lengths[-1] <= (2 * m) ** 2:
            vectors = [vec[r2 == length] for length in lengths]
            return [v[np.lexsort(v.T[::-1])] for v in vectors], lengths
        m += 1


# --------------------------------------------------------------------------------------------- sublattices
def _b2(lattice: Lattice) -> np.ndarray:
    """B2 (CsCl): bcc corners vs body centres; on sc the rocksalt-type checkerboard (x + y + z odd or even)."""
    d = lattice.doubled_coordinates
    if lattice.kind == "bcc":
        return (d[:, 0] % 2)[None]
    if lattice.size % 2:
        raise ValueError(f"size: the B2 (checkerboard) order on sc needs an even L, got {lattice.size}")
    return ((d.sum(1) // 2) % 2)[None]


def _l10(lattice: Lattice) -> np.ndarray:
    """L1_0 (CuAu): alternate (001) planes of the fcc cell; three variants, layered along x, y, z."""
    return lattice.doubled_coordinates.T % 2


def _l12(lattice: Lattice) -> np.ndarray:
    """L1_2 (Cu3Au): the four simple-cubic sublattices of fcc (corners, three face centres)."""
    return (np.arange(lattice.n_sites) % 4)[None]


#: Ordered structures: name -> (lattices it lives on, sublattice labelling, occupation of each sublattice
#: in the ideal structure). The labelling returns ``(variants, n_sites)`` labels; each row is one way of
#: placing the structure on the lattice (L1_0: layering along x, y or z).
STRUCTURES = {
    "B2": (("bcc", "sc"), _b2, (0, 1)),
    "L1_0": (("fcc",), _l10, (0, 1)),
    "L1_2": (("fcc",), _l12, (1, 0, 0, 0)),
}


def sublattices(lattice: Lattice, structure: str) -> np.ndarray:
    """Sublattice labels ``(variants, n_sites)`` (small ints, equal-sized sublattices) of an ordered structure.

    B2 has one variant of two sublattices (bcc, or sc with even ``L``); L1_0 three variants of two (fcc);
    L1_2 one variant of four (fcc).
    """
    checks.choice("structure", structure, STRUCTURES)
    allowed, labels, _ = STRUCTURES[structure]
    if lattice.kind not in allowed:
        raise ValueError(f"structure: {structure} order is defined on {' or '.join(allowed)}, "
                         f"not on {lattice.kind}")
    return labels(lattice)


def ordered_occupation(lattice: Lattice, structure: str, variant: int = 0) -> np.ndarray:
    """The perfectly ordered configuration: B2 and L1_0 put species 0 and 1 on alternate sublattices
    (50/50); L1_2 puts species 1 (Au in Cu3Au) on the cube corners and species 0 on the faces (75/25)."""
    labels = sublattices(lattice, structure)
    variant = checks.integer("variant", variant, 0, len(labels) - 1)
    pattern = np.array(STRUCTURES[structure][2], dtype=SPECIES_DTYPE)
    return pattern[labels[variant]]


# -------------------------------------------------------------------------------------------- occupations
def species_counts(n_sites: int, composition) -> np.ndarray:
    """Atoms of each species for ``composition`` (fractions summing to 1) on ``n_sites`` sites.

    Raises a ValueError naming ``composition`` when the fractions are not numbers in [0, 1] summing to 1,
    or when a fraction times ``n_sites`` is not a whole number of atoms (the composition does not fit).
    """
    n_sites = checks.integer("n_sites", n_sites, low=1)
    if isinstance(composition, (str, bytes)) or not hasattr(composition, "__len__") or len(composition) < 2:
        raise ValueError(f"composition: expected a sequence of at least 2 fractions, got {composition!r}")
    fractions = [checks.number(f"composition[{k}]", c, 0.0, 1.0) for k, c in enumerate(composition)]
    if not math.isclose(sum(fractions), 1.0, abs_tol=1e-9):
        raise ValueError(f"composition: expected fractions summing to 1, got {tuple(composition)} "
                         f"(sum {sum(fractions):g})")
    atoms = np.array(fractions) * n_sites
    counts = np.rint(atoms).astype(np.int64)
    misfit = np.abs(atoms - counts) > 1e-6
    if misfit.any():
        k = int(np.argmax(misfit))
        raise ValueError(f"composition: {tuple(composition)} does not fit a cell of {n_sites} sites "
                         f"({fractions[k]:g} x {n_sites} = {atoms[k]:g} atoms of species {k}); choose "
                         f"fractions that are multiples of 1/{n_sites}")
    return counts


def random_occupation(lattice: Lattice, composition, shape=(), seed=None) -> np.ndarray:
    """Random configurations at exactly the given composition, shape ``(*shape, n_sites)``, dtype int8.

    Each row is a uniformly random arrangement of the species multiset (a random permutation), i.e. an
    ideal random alloy at fixed composition. ``seed`` is anything ``numpy.random.default_rng`` takes.
    """
    counts = species_counts(lattice.n_sites, composition)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    for k, n in enumerate(shape):
        checks.integer(f"shape[{k}]", n, low=1)
    rng = np.random.default_rng(seed)
    base = np.repeat(np.arange(len(counts), dtype=SPECIES_DTYPE), counts)
    keys = rng.random((*shape, lattice.n_sites))
    return base[np.argsort(keys, axis=-1)]


def check_occupation(name: str, occupation, lattice: Lattice, n_species: int) -> np.ndarray:
    """``occupation`` as an int array ``(..., n_sites)`` of species in ``[0, n_species)``, else a ValueError."""
    if not hasattr(occupation, "dtype"):
        occupation = np.asarray(occupation)
    checks.array(name, occupation, kinds="iu")
    if occupation.ndim < 1 or occupation.shape[-1] != lattice.n_sites:
        raise ValueError(f"{name}: expected an array (..., {lattice.n_sites}) of species for {lattice!r}, "
                         f"got shape {tuple(occupation.shape)}")
    if occupation.size and (occupation.min() < 0 or occupation.max() >= n_species):
        raise ValueError(f"{name}: expected species in [0, {n_species}), got values in "
                         f"[{occupation.min()}, {occupation.max()}]")
    return occupation
