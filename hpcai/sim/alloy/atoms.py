"""Conversion between occupation arrays and ``ase.Atoms`` (ASE is optional: ``pip install 'hpcai[alloy]'``).

An occupation ``(n_sites,)`` on a :class:`~hpcai.sim.alloy.lattice.Lattice` plus element symbols (species
``k`` is ``elements[k]``) and a lattice constant in angstrom is a periodic ``ase.Atoms``; the sites keep
their order, so ``atoms[i]`` is site ``i``. :func:`from_atoms` recognises any sc/bcc/fcc cubic supercell
(the site count ``nb * L**3`` fixes the lattice: 1, 2 and 4 times a cube are never equal).

References
----------
Larsen, A. H. et al. (2017). The atomic simulation environment -- a Python library for working with atoms.
J. Phys.: Condens. Matter 29, 273002.
Vegard, L. (1921). Die Konstitution der Mischkristalle und die Raumfüllung der Atome. Z. Phys. 5, 17-26.
"""
from __future__ import annotations

import numpy as np

from ... import checks
from .lattice import LATTICES, Lattice, check_occupation

__all__ = ["check_elements", "from_atoms", "import_ase", "to_atoms", "vegard_lattice_constant"]


def import_ase():
    """The ``ase`` module, or an ImportError saying how to install it."""
    try:
        import ase
    except ImportError as exc:
        raise ImportError("ase is needed for atoms and reference energies: pip install 'hpcai[alloy]' "
                          "(or pip install ase)") from exc
    return ase


def check_elements(elements) -> tuple[str, ...]:
    """``elements`` as a tuple of distinct chemical symbols, at least two, else a ValueError naming it."""
    import_ase()
    from ase.data import atomic_numbers
    if isinstance(elements, str) or not hasattr(elements, "__len__") or len(elements) < 2:
        raise ValueError(f"elements: expected a sequence of at least 2 chemical symbols, got {elements!r}")
    elements = tuple(elements)
    unknown = [e for e in elements if not isinstance(e, str) or e not in atomic_numbers]
    if unknown or len(set(elements)) != len(elements):
        why = f"unknown symbols {unknown}" if unknown else "repeated symbols"
        raise ValueError(f"elements: expected distinct chemical symbols, got {elements!r} ({why})")
    return elements


def to_atoms(lattice: Lattice, occupation, elements, lattice_constant: float):
    """``ase.Atoms`` of a configuration ``(n_sites,)``, or a list of them for ``(..., n_sites)``.

    The cell is cubic, ``L * lattice_constant`` (angstrom) on a side, periodic in all directions.
    """
    ase = import_ase()
    elements = check_elements(elements)
    a = checks.number("lattice_constant", lattice_constant, 0.0, low_open=True)
    occupation = check_occupation("occupation", occupation, lattice, len(elements))
    symbols = np.array(elements)
    cell = np.eye(3) * lattice.size * a

    def make(row):
        return ase.Atoms(symbols[row].tolist(), positions=lattice.positions * a, cell=cell, pbc=True)
    if occupation.ndim == 1:
        return make(occupation)
    return [make(row) for row in occupation.reshape(-1, lattice.n_sites)]


def from_atoms(atoms, elements=None, shells: int = 1):
    """The lattice, occupation, elements and lattice constant of an ``ase.Atoms`` cubic supercell.

    Parameters
    ----------
    atoms : ase.Atoms
        A periodic sc, bcc or fcc ``L x L x L`` supercell of the conventional cubic cell (any site order).
    elements : sequence of str, optional
        Species order; default: the symbols present, by atomic number.
    shells : int
        Neighbour shells of the returned :class:`Lattice`.

    Returns
    -------
    lattice : Lattice
    occupation : ndarray (n_sites,) int8
    elements : tuple of str
    lattice_constant : float (angstrom)
    """
    import_ase()
    from ase.data import atomic_numbers
    cell = np.asarray(atoms.cell)
    n = len(atoms)
    side = cell[0, 0]
    if not (np.allclose(cell, np.eye(3) * side, atol=1e-6 * max(side, 1)) and side > 0 and all(atoms.pbc)):
        raise ValueError(f"atoms: expected a periodic cubic cell, got cell {cell.tolist()} pbc {atoms.pbc}")
    found = [(kind, round((n / len(basis)) ** (1 / 3))) for kind, basis in LATTICES.items()]
    found = [(kind, L) for kind, L in found if L >= 1 and len(LATTICES[kind]) * L ** 3 == n]
    if not found:
        raise ValueError(f"atoms: {n} atoms is not an sc, bcc or fcc L x L x L supercell")
    kind, L = found[0]
    lattice = Lattice(kind, L, shells=shells)
    a = side / L
    doubled = 2 * atoms.get_positions() / a
    grid = np.rint(doubled).astype(np.int64) % (2 * L)
    index = {tuple(p): i for i, p in enumerate(lattice.doubled_coordinates)}
    sites = np.array([index.get(tuple(p), -1) for p in grid])
    if np.abs(doubled - np.rint(doubled)).max() > 1e-3 or (sites < 0).any() or len(set(sites)) != n:
        raise ValueError(f"atoms: the positions are not the sites of a {kind} L={L} cell with a = {a:.4g} A")
    symbols = atoms.get_chemical_symbols()
    present = sorted(set(symbols), key=atomic_numbers.get)
    elements = tuple(present) if elements is None else tuple(elements)
    if len(elements) >= 2:
        elements = check_elements(elements)
    missing = sorted(set(present) - set(elements))
    if missing:
        raise ValueError(f"elements: {list(elements)} lacks {missing}, which the atoms contain")
    species = {e: k for k, e in enumerate(elements)}
    occupation = np.empty(n, dtype=np.int8)
    occupation[sites] = [species[s] for s in symbols]
    return lattice, occupation, elements, float(a)


def vegard_lattice_constant(kind: str, elements, composition) -> float:
    """Lattice constant (angstrom) of a ``kind`` cell by Vegard's law from the elements' reference crystals.

    Each element's ASE reference state (fcc, bcc or sc; ``ase.data.reference_states``) gives its volume per
    atom, hence the constant of a pure ``kind`` cell of that volume; these are averaged with the
    composition weights. Cu3Au on fcc: 0.75 * 3.61 + 0.25 * 4.08 = 3.73 A.
    """
    import_ase()
    from ase.data import atomic_numbers, reference_states
    checks.choice("kind", kind, LATTICES)
    elements = check_elements(elements)
    weights = np.asarray([checks.number(f"composition[{k}]", c, 0.0, 1.0) for k, c in enumerate(composition)])
    if len(weights) != len(elements) or not np.isclose(weights.sum(), 1.0):
        raise ValueError(f"composition: expected {len(elements)} fractions summing to 1, got {composition!r}")
    constants = []
    for e in elements:
        ref = reference_states[atomic_numbers[e]] or {}
        if ref.get("symmetry") not in LATTICES:
            raise ValueError(f"elements: {e}'s reference crystal is {ref.get('symmetry')!r}, not cubic; "
                             f"give the lattice constant explicitly")
        volume = ref["a"] ** 3 / len(LATTICES[ref["symmetry"]])
        constants.append((volume * len(LATTICES[kind])) ** (1 / 3))
    return float(weights @ np.array(constants))

