r"""Crystals: a cell, atoms in fractional coordinates and a space group, random or read from a file.

:func:`random_crystal` draws a crystal of any of the 230 space groups. The symmetry operations of the
group's standard setting come from spglib's database (the first Hall setting of the group: unique axis b
for monoclinic groups, hexagonal axes for rhombohedral ones); the cell is drawn for the group's crystal
system (:data:`LATTICE_SHAPES`). Each site is either a general position or a special one: a point on the
fixed-point set (mirror plane, rotation axis, inversion centre...) of one or two randomly chosen operations
or their lattice translates, :math:`(I - R)\,x = t` [International Tables Vol. A, sec. 8.3]. The orbit of
every site under the group gives the atoms; sites are redrawn (or the cell stretched a little,
:data:`MAX_STRETCH`) until all atoms are at least ``min_distance`` apart, and the whole draw is repeated
until spglib finds exactly the requested group (a draw with too few or too special sites can have more
symmetry than asked for: two equal atoms always sit on an inversion centre).

:func:`crystal_from_atoms` and :func:`read_crystal` take a user's own material (an ASE ``Atoms`` or any
file ASE reads, such as a CIF) and bring it to spglib's conventional standard cell.

spglib and ase are optional (``pip install 'hpcai[cbed]'``) and imported only by the functions that need them.

References
----------
Togo, A. and Tanaka, I. (2018). Spglib: a software library for crystal symmetry search. arXiv:1808.01590.
Hahn, Th. (ed.) (2005). International Tables for Crystallography, Vol. A. Springer.
Hill, E. A. (1900). J. Am. Chem. Soc. 22, 478 (the order of elements in a formula).
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import math
import os
import warnings

import numpy as np

from ... import checks
from .geometry import direct_lattice, reciprocal_lattice
from .scattering import SYMBOLS, atomic_number

__all__ = ["CRYSTAL_SYSTEMS", "DEFAULT_ELEMENTS", "LATTICE_SHAPES", "MAX_STRETCH", "Crystal",
           "cell_parameters", "crystal_from_atoms", "crystal_system", "hill_formula", "random_crystal", "read_crystal",
           "space_group_of", "symmetry_operations"]

CRYSTAL_SYSTEMS = {  # name -> first and last space group number [International Tables Vol. A]
    "triclinic": (1, 2), "monoclinic": (3, 15), "orthorhombic": (16, 74), "tetragonal": (75, 142),
    "trigonal": (143, 167), "hexagonal": (168, 194), "cubic": (195, 230),
}

# Stable elements without noble gases: the default pool for random crystals.
DEFAULT_ELEMENTS = tuple(
    "Li Be B C N O F Na Mg Al Si P S Cl K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Rb Sr Y Zr Nb Mo "
    "Ru Rh Pd Ag Cd In Sn Sb Te I Cs Ba La Ce Pr Nd Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au "
    "Hg Tl Pb Bi".split())

_EXTRA = "pip install 'hpcai[cbed]'"


def _spglib():
    try:
        import spglib
    except ImportError:
        raise ImportError(f"crystal symmetry needs spglib: {_EXTRA}") from None
    return spglib


def _spglib_call(function: str, *args, **kwargs):
    """``spglib.<function>(...)``, or None where spglib fails (it returns None or raises, by version); its
    deprecation notice about that choice (spglib 2.7-2.x) is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*OLD_ERROR_HANDLING", category=DeprecationWarning)
        try:
            return getattr(_spglib(), function)(*args, **kwargs)
        except (ValueError, RuntimeError, TypeError) as e:
            if type(e).__module__.startswith("spglib"):
                return None
            raise


def crystal_system(space_group: int) -> str:
    """Name of the crystal system of space group ``space_group`` (1..230)."""
    space_group = checks.integer("space_group", space_group, 1, 230)
    return next(name for name, (lo, hi) in CRYSTAL_SYSTEMS.items() if lo <= space_group <= hi)


def hill_formula(numbers) -> str:
    """Reduced chemical formula in Hill order (C, H, then alphabetical; alphabetical without C)."""
    counts = collections.Counter(SYMBOLS[int(z) - 1] for z in np.ravel(numbers))
    if not counts:
        return ""
    divisor = math.gcd(*counts.values())
    order = sorted(counts, key=lambda s: (0, s) if s == "C" else (1, s) if s == "H" and "C" in counts else (2, s))
    return "".join(s + (str(counts[s] // divisor) if counts[s] // divisor > 1 else "") for s in order)


def cell_parameters(lattice) -> np.ndarray:
    """(a, b, c, alpha, beta, gamma) in Å and degrees of cell vectors given as rows."""
    lattice = np.asarray(lattice, dtype=np.float64)
    lengths = np.linalg.norm(lattice, axis=1)
    cosines = [lattice[j] @ lattice[k] / (lengths[j] * lengths[k]) for j, k in ((1, 2), (0, 2), (0, 1))]
    return np.concatenate([lengths, np.degrees(np.arccos(np.clip(cosines, -1, 1)))])


@dataclasses.dataclass(frozen=True, eq=False)
class Crystal:
    """A crystal: conventional cell, atoms and space group.

    Attributes
    ----------
    cellpar : (6,) float
        a, b, c (Å) and alpha, beta, gamma (degrees).
    positions : (n, 3) float
        Fractional coordinates of every atom of the cell, in [0, 1).
    numbers : (n,) int
        Atomic numbers.
    space_group : int
        International space group number, 1..230.
    rotations : (m, 3, 3) int
        The point group's rotations in this cell's fractional basis (they act on directions [uvw]).
    name : str
        Material identifier (the ``material`` label of a dataset sample).
    """

    cellpar: np.ndarray
    positions: np.ndarray
    numbers: np.ndarray
    space_group: int
    rotations: np.ndarray
    name: str = ""

    def __post_init__(self):
        cellpar = checks.array("cellpar", np.asarray(self.cellpar, dtype=np.float64), shape=(6,), finite=True)
        direct_lattice(*cellpar)  # checks lengths and angles
        positions = checks.array("positions", np.asarray(self.positions, dtype=np.float64), shape=(None, 3),
                                 finite=True)
        numbers = np.asarray([atomic_number(z, "numbers") for z in np.ravel(self.numbers).tolist()], np.int64)
        if len(numbers) != len(positions) or not len(numbers):
            raise ValueError(f"numbers: expected one atomic number per position ({len(positions)}), "
                             f"got {len(numbers)}")
        rotations = checks.array("rotations", np.asarray(self.rotations), shape=(None, 3, 3), kinds="iu")
        object.__setattr__(self, "cellpar", cellpar)
        object.__setattr__(self, "positions", positions % 1.0)
        object.__setattr__(self, "numbers", numbers)
        object.__setattr__(self, "space_group", checks.integer("space_group", self.space_group, 1, 230))
        object.__setattr__(self, "rotations", rotations.astype(np.int64))
        object.__setattr__(self, "name", checks.text("name", self.name, empty=True))

    @property
    def lattice(self) -> np.ndarray:
        """Cell vectors as rows (Å), a along x and b in the xy plane."""
        return direct_lattice(*self.cellpar)

    @property
    def reciprocal(self) -> np.ndarray:
        """Reciprocal cell vectors as rows (1/Å, without 2π)."""
        return reciprocal_lattice(self.lattice)

    @property
    def volume(self) -> float:
        """Cell volume in Å³."""
        return float(abs(np.linalg.det(self.lattice)))

    @property
    def abc(self) -> np.ndarray:
        return self.cellpar[:3].copy()

    @property
    def angles(self) -> np.ndarray:
        return self.cellpar[3:].copy()

    @property
    def crystal_system(self) -> str:
        return crystal_system(self.space_group)

    @property
    def formula(self) -> str:
        """Reduced formula, Hill order."""
        return hill_formula(self.numbers)

    def __repr__(self) -> str:
        a, b, c, al, be, ga = self.cellpar
        return (f"Crystal({self.name or self.formula!r}, space group {self.space_group} ({self.crystal_system}), "
                f"{len(self.numbers)} atoms, cell {a:.3f} {b:.3f} {c:.3f} Å {al:.1f} {be:.1f} {ga:.1f}°)")


# ---------------------------------------------------------------------------------------------- symmetry

@functools.cache
def _hall_numbers() -> dict:
    """space group number -> the first (standard) Hall setting in spglib's database."""
    first = {}
    for hall in range(1, 531):
        first.setdefault(int(_spglib_call("get_spacegroup_type", hall).number), hall)
    return first


@functools.cache
def symmetry_operations(space_group: int) -> tuple:
    """(rotations (m, 3, 3) int, translations (m, 3)) of the group's standard setting, centring included."""
    space_group = checks.integer("space_group", space_group, 1, 230)
    ops = _spglib_call("get_symmetry_from_database", _hall_numbers()[space_group])
    return np.asarray(ops["rotations"], np.int64), np.asarray(ops["translations"], np.float64)


@functools.cache
def _fixed_point_operations(space_group: int) -> tuple:
    """(R, t, P) for every operation with fixed points, t shifted by a lattice vector so that (I - R) x = t
    is solvable: the intrinsic (screw or glide) part P t, with P the mean of R^k over the operation's
    order, must vanish [International Tables Vol. A, Part 11]."""
    rotations, translations = symmetry_operations(space_group)
    powers = [np.broadcast_to(np.eye(3, dtype=np.int64), rotations.shape)]
    for _ in range(5):
        powers.append(powers[-1] @ rotations)
    powers = np.stack(powers, axis=1)  # (m, 6, 3, 3): R^0 .. R^5
    identity = (powers == np.eye(3, dtype=np.int64)).all(axis=(2, 3))
    identity[:, 0] = False
    order = np.where(identity.any(1), identity.argmax(1), 6)  # R^order = I (orders 1, 2, 3, 4, 6)
    used = np.arange(6)[None, :] < order[:, None]
    projector = (powers * used[:, :, None, None]).sum(1) / order[:, None, None]
    shifts = np.array(list(itertools.product(range(-2, 3), repeat=3)), np.float64)
    intrinsic = np.einsum("mij,msj->msi", projector, translations[:, None, :] + shifts)
    solvable = (np.abs(intrinsic - np.round(intrinsic)).max(-1) < 1e-9) & (order > 1)[:, None]
    found = []
    for m in np.flatnonzero(solvable.any(1)):
        k = int(np.flatnonzero(solvable[m])[0])
        found.append((rotations[m].astype(np.float64), translations[m] + shifts[k] - np.round(intrinsic[m, k]),
                      projector[m]))
    return tuple(found)


def _symmetry_dataset(lattice, positions, numbers, symprec: float):
    cell = (np.asarray(lattice, dtype=np.float64), np.asarray(positions, dtype=np.float64), np.asarray(numbers))
    dataset = _spglib_call("get_symmetry_dataset", cell, symprec=symprec)
    if dataset is None:
        raise ValueError("lattice, positions, numbers: spglib could not determine a space group")
    return dataset


def space_group_of(lattice, positions, numbers, symprec: float = 1e-3) -> int:
    """Space group number spglib finds for a cell (``symprec`` in Å)."""
    return int(_symmetry_dataset(lattice, positions, numbers, symprec).number)


# ---------------------------------------------------------------------------------------------- lattices

def _volume_factor(angles) -> float:
    ca, cb, cg = np.cos(np.radians(angles))
    return float(math.sqrt(max(1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg, 0.0)))


def _triclinic(rng):
    while True:
        angles = rng.uniform(70.0, 110.0, 3)
        if _volume_factor(angles) > 0.6:
            return np.concatenate([rng.uniform(0.7, 1.4, 3), angles])


def _monoclinic(rng):  # unique axis b
    return np.array([*rng.uniform(0.7, 1.4, 3), 90.0, rng.uniform(92.0, 118.0), 90.0])


def _orthorhombic(rng):
    return np.array([*rng.uniform(0.6, 1.6, 3), 90.0, 90.0, 90.0])


def _tetragonal(rng):
    c = rng.uniform(0.55, 1.8)
    return np.array([1.0, 1.0, c, 90.0, 90.0, 90.0])


def _hexagonal(rng):  # hexagonal axes, also for trigonal and rhombohedral groups
    c = rng.uniform(0.55, 2.0)
    return np.array([1.0, 1.0, c, 90.0, 90.0, 120.0])


def _cubic(rng):
    return np.array([1.0, 1.0, 1.0, 90.0, 90.0, 90.0])


LATTICE_SHAPES = {  # crystal system -> draw (a, b, c, alpha, beta, gamma) of any size from a Generator
    "triclinic": _triclinic, "monoclinic": _monoclinic, "orthorhombic": _orthorhombic,
    "tetragonal": _tetragonal, "trigonal": _hexagonal, "hexagonal": _hexagonal, "cubic": _cubic,
}


def _scaled(shape: np.ndarray, volume: float) -> np.ndarray:
    current = float(np.prod(shape[:3])) * _volume_factor(shape[3:])
    return np.concatenate([shape[:3] * (volume / current) ** (1 / 3), shape[3:]])


# ---------------------------------------------------------------------------------------------- sites

_SHIFTS = np.array(list(itertools.product((-1, 0, 1), repeat=3)), np.float64)


def _orbit(x, rotations, translations) -> np.ndarray:
    """The distinct images of fractional point ``x`` under the group, wrapped into [0, 1)."""
    images = (rotations @ x + translations) % 1.0
    images = np.round(images, 7) % 1.0
    return np.unique(images, axis=0)


def _min_distance(new, placed, lattice) -> float:
    """Smallest distance (Å) from atoms ``new`` to each other and to ``placed``, periodic images included."""
    others = np.concatenate([new, placed])
    diff = new[:, None, :] - others[None, :, :]
    cart = ((diff - np.round(diff)) @ lattice)[:, :, None, :] + _SHIFTS @ lattice
    dist2 = np.einsum("abki,abki->abk", cart, cart)
    own = np.arange(len(new))
    dist2[own, own, len(_SHIFTS) // 2] = np.inf  # an atom and itself (the zero shift is the middle one)
    return float(math.sqrt(dist2.min())) if dist2.size else math.inf


_CORNERS = np.array(list(itertools.product((0, 1), repeat=3)), np.float64)


def _site_sampler(space_group: int, special: bool, rng):
    """A function drawing random points of one kind: anywhere, or on the common fixed points of one or
    two operations (returns None if the chosen operations have no common fixed point).

    An operation (R, t) and its lattice translates (R, t + L) fix parallel copies of one symmetry element
    (the 2-fold axes at x = 0 and x = 1/2, the eight inversion centres of P-1); a random L picks one.
    """
    if not special:
        return lambda: rng.random(3)
    ops = _fixed_point_operations(space_group)
    if not ops:
        return None
    picks = rng.choice(len(ops), size=min(len(ops), int(rng.integers(1, 3))), replace=False)
    matrix, rhs = [], []
    for k in picks:
        rot, trans, projector = ops[k]
        shift = _CORNERS[rng.integers(len(_CORNERS))]
        intrinsic = projector @ shift
        if np.abs(intrinsic - np.round(intrinsic)).max() > 1e-9:
            intrinsic = shift = np.zeros(3)  # this translate is a screw or glide: keep the first copy
        matrix.append(np.eye(3) - rot)
        rhs.append(trans + shift - np.round(intrinsic))
    matrix, rhs = np.concatenate(matrix), np.concatenate(rhs)
    x0 = np.linalg.lstsq(matrix, rhs, rcond=None)[0]
    if np.abs(matrix @ x0 - rhs).max() > 1e-9:
        return None
    _, sing, vt = np.linalg.svd(matrix)
    free = vt[np.sum(sing > 1e-9):]  # directions along which the special position may move
    return lambda: (x0 + rng.uniform(0.0, math.sqrt(3.0), len(free)) @ free) % 1.0


MAX_STRETCH = 1.35  # how far a draw may stretch its cell beyond the drawn density to keep atoms apart


def _draw_structure(space_group, rng, elements, max_species, max_atoms, min_distance, volume_per_atom):
    """One attempt: (cellpar, positions, numbers) or None.

    The cell is sized for the planned number of atoms at a drawn volume per atom; a site whose atoms come
    closer than ``min_distance`` may stretch the whole cell by up to :data:`MAX_STRETCH` (orbits of polar
    groups such as P6mm lie in one plane, which volume alone does not foresee), else it is redrawn.
    """
    rotations, translations = symmetry_operations(space_group)

    def draw(special):
        sampler = _site_sampler(space_group, special, rng)  # a new choice of special position each time
        return None if sampler is None else _orbit(sampler(), rotations, translations)

    species = rng.choice(elements, size=int(rng.integers(1, max_species + 1)), replace=False)
    site_species = list(species) + list(rng.choice(species, size=int(rng.integers(1, 3))))
    plan, total = [], 0  # (species, special?) per site; the planned number of atoms sizes the cell
    for z in site_species:
        for special in ((rng.random() < 0.5), True):
            orbit = draw(special)
            if orbit is not None and total + len(orbit) <= max_atoms:
                plan.append((z, special))
                total += len(orbit)
                break
    if not plan:
        return None
    cellpar = _scaled(LATTICE_SHAPES[crystal_system(space_group)](rng), total * rng.uniform(*volume_per_atom))
    lattice = direct_lattice(*cellpar)
    positions, numbers, stretch = np.zeros((0, 3)), [], 1.0
    for z, special in plan:
        for _ in range(30):
            orbit = draw(special)
            if orbit is None or len(positions) + len(orbit) > max_atoms:
                continue
            closest = _min_distance(orbit, positions, lattice)
            need = min_distance / closest if closest > 0 else math.inf
            if need <= MAX_STRETCH:
                positions = np.concatenate([positions, orbit])
                numbers += [z] * len(orbit)
                stretch = max(stretch, need)
                break
        else:
            return None
    return np.concatenate([cellpar[:3] * stretch, cellpar[3:]]), positions, np.array(numbers, np.int64)


def random_crystal(space_group: int, rng=None, *, elements=DEFAULT_ELEMENTS, max_species: int = 3,
                   max_atoms: int = 96, min_distance: float = 2.0, volume_per_atom=(14.0, 24.0),
                   symprec: float = 1e-3, max_tries: int = 200, name: str = "") -> Crystal:
    """A random crystal of space group ``space_group`` (checked with spglib).

    Parameters
    ----------
    space_group : int
        1..230.
    rng : numpy.random.Generator or int or None
        Source of randomness (an int seeds a new Generator).
    elements : sequence of str or int
        Pool the 1..``max_species`` species are drawn from.
    max_atoms : int
        Most atoms in the conventional cell (groups whose smallest orbit is larger cannot be built).
    min_distance : float
        Smallest interatomic distance, Å.
    volume_per_atom : (float, float)
        Range of the cell volume per atom, Å³, drawn uniformly (a draw may stretch the cell beyond it to
        keep atoms ``min_distance`` apart, see :data:`MAX_STRETCH`).
    symprec, max_tries
        spglib tolerance (Å) and number of draws before giving up with a RuntimeError.
    """
    space_group = checks.integer("space_group", space_group, 1, 230)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    pool = np.array([atomic_number(e, "elements") for e in elements], np.int64)
    if not len(pool):
        raise ValueError("elements: expected at least one element")
    max_species = checks.integer("max_species", max_species, 1, len(pool))
    max_atoms = checks.integer("max_atoms", max_atoms, 1)
    min_distance = checks.number("min_distance", min_distance, 0.0, low_open=True)
    low, high = (checks.number("volume_per_atom", v, 0.0, low_open=True) for v in volume_per_atom)
    max_tries = checks.integer("max_tries", max_tries, 1)
    for _ in range(max_tries):
        drawn = _draw_structure(space_group, rng, pool, max_species, max_atoms, min_distance, (low, high))
        if drawn is None:
            continue
        cellpar, positions, numbers = drawn
        try:
            found = space_group_of(direct_lattice(*cellpar), positions, numbers, symprec)
        except ValueError:
            continue
        if found == space_group:
            rotations = np.unique(symmetry_operations(space_group)[0], axis=0)
            return Crystal(cellpar, positions, numbers, space_group, rotations, name)
    raise RuntimeError(f"space_group: no crystal of group {space_group} with at most {max_atoms} atoms and "
                       f"atoms {min_distance} Å apart found in {max_tries} tries; raise max_atoms or max_tries")


# ---------------------------------------------------------------------------------------------- from files

def crystal_from_atoms(atoms, name: str = "", *, symprec: float = 1e-3, conventional: bool = True) -> Crystal:
    """A Crystal from an ASE ``Atoms``: space group from spglib, cell standardised to the conventional one.

    With ``conventional=False`` the cell is kept as given (the cell parameters are what matter: the lattice
    is rebuilt right-handed with a along x, so a left-handed input cell becomes its mirror image).
    """
    symprec = checks.number("symprec", symprec, 0.0, low_open=True)
    try:
        cell = (np.asarray(atoms.cell[:], float), atoms.get_scaled_positions(), np.asarray(atoms.numbers))
    except AttributeError:
        raise TypeError(f"atoms: expected an ase.Atoms, got {type(atoms).__name__}") from None
    if not np.asarray(atoms.pbc).all() or abs(np.linalg.det(cell[0])) < 1e-6:
        raise ValueError("atoms: expected a periodic crystal with a full 3-d cell")
    if conventional:
        standard = _spglib_call("standardize_cell", cell, to_primitive=False, no_idealize=False, symprec=symprec)
        if standard is None:
            raise ValueError("atoms: spglib could not standardise the cell")
        cell = tuple(np.asarray(x) for x in standard)
    dataset = _symmetry_dataset(*cell, symprec)
    return Crystal(cell_parameters(cell[0]), cell[1], cell[2], int(dataset.number),
                   np.unique(dataset.rotations, axis=0), name or hill_formula(cell[2]))


def read_crystal(path, name: str = "", *, index: int = 0, symprec: float = 1e-3,
                 conventional: bool = True) -> Crystal:
    """A Crystal from a structure file ASE reads (CIF, POSCAR, ...); ``name`` defaults to the file's stem."""
    try:
        import ase.io
    except ImportError:
        raise ImportError(f"reading crystal files needs ase: {_EXTRA}") from None
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: no such file {path!r}")
    atoms = ase.io.read(path, index=checks.integer("index", index), parallel=False)  # no broadcast over MPI ranks
    name = name or os.path.splitext(os.path.basename(path))[0]
    return crystal_from_atoms(atoms, name, symprec=symprec, conventional=conventional)
