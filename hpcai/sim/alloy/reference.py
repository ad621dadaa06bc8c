"""Reference energies from any ASE calculator -- the "expensive" energy a surrogate learns to replace.

:class:`AseReference` is an :class:`~hpcai.sim.alloy.energy.EnergyModel`: it turns occupations into
periodic ``ase.Atoms`` (unrelaxed, on the ideal lattice) and asks the calculator for the potential energy,
one configuration at a time. Energies are **eV per cell** (total); divide by ``n_sites`` and multiply by
1000 for meV/atom. The default calculator is ASE's EMT (effective-medium theory: Al, Cu, Ag, Au, Ni, Pd,
Pt), a fast stand-in for DFT (about 20-100 ms per 32-256-atom cell); any ASE calculator -- a DFT code
included -- goes through the same interface.

A calculator that raises, or returns NaN or infinity, becomes a :class:`CalculatorError` naming the
configuration (its index in the batch), so a failing reference evaluation is reported, not averaged in.

References
----------
Jacobsen, K. W., Stoltze, P. and Norskov, J. K. (1996). A semi-empirical effective medium theory for metals
and alloys. Surf. Sci. 366, 394-402.
Larsen, A. H. et al. (2017). The atomic simulation environment. J. Phys.: Condens. Matter 29, 273002.
"""
from __future__ import annotations

import collections
import math

import numpy as np

from ... import checks
from .atoms import check_elements, import_ase, to_atoms, vegard_lattice_constant
from .lattice import Lattice, check_occupation

__all__ = ["AseReference", "CalculatorError", "emt_elements"]


class CalculatorError(RuntimeError):
    """A reference calculator raised or gave a non-finite energy; ``index`` is the configuration's index."""

    def __init__(self, message: str, index: int):
        super().__init__(message)
        self.index = index


def emt_elements() -> tuple[str, ...]:
    """The metals ASE's EMT has parameters for (its H, C, N, O are for molecules, not alloys)."""
    import_ase()
    from ase.calculators.emt import parameters
    return tuple(e for e in parameters if e not in ("H", "C", "N", "O"))


class AseReference:
    """Energies of configurations from an ASE calculator (default EMT), in eV per cell.

    Parameters
    ----------
    lattice : Lattice
    elements : sequence of str
        Chemical symbol of each species (species ``k`` is ``elements[k]``).
    lattice_constant : float, optional
        Angstrom; default Vegard's law from each configuration's own composition
        (:func:`~hpcai.sim.alloy.atoms.vegard_lattice_constant`).
    calculator : ase Calculator, optional
        Default ``ase.calculators.emt.EMT()``; elements EMT lacks are refused here, not mid-run.
    cache_size : int
        Energies of this many recent configurations are kept, so the MC's swap deltas cost one calculation
        (the configuration before the swap was usually evaluated already). 0 turns the cache off.
    """

    def __init__(self, lattice: Lattice, elements, lattice_constant: float | None = None, calculator=None,
                 cache_size: int = 1024):
        import_ase()
        if not isinstance(lattice, Lattice):
            raise TypeError(f"lattice: expected a Lattice, got {type(lattice).__name__}")
        self.lattice, self.elements = lattice, check_elements(elements)
        self.n_species = len(self.elements)
        self.lattice_constant = None if lattice_constant is None else \
            checks.number("lattice_constant", lattice_constant, 0.0, low_open=True)
        from ase.calculators.emt import EMT
        if calculator is None:
            calculator = EMT()
        if isinstance(calculator, EMT):
            unknown = [e for e in self.elements if e not in emt_elements()]
            if unknown:
                raise ValueError(f"elements: EMT has no parameters for {unknown}; it knows "
                                 f"{', '.join(emt_elements())} (or pass another ASE calculator)")
        if not callable(getattr(calculator, "get_potential_energy", None)):
            raise TypeError(f"calculator: expected an ASE calculator, got {type(calculator).__name__}")
        self.calculator = calculator
        self.cache_size = checks.integer("cache_size", cache_size, low=0)
        self._cache: collections.OrderedDict[bytes, float] = collections.OrderedDict()
        self.calls = 0  # calculator evaluations so far (cache hits excluded)

    def atoms(self, occupation) -> list:
        """The ``ase.Atoms`` of configurations ``(..., n_sites)`` (a flat list), as they are evaluated."""
        occupation = check_occupation("occupation", occupation, self.lattice, self.n_species)
        rows = occupation.reshape(-1, self.lattice.n_sites)
        return [to_atoms(self.lattice, row, self.elements, self._constant(row)) for row in rows]

    def _constant(self, row: np.ndarray) -> float:
        if self.lattice_constant is not None:
            return self.lattice_constant
        fractions = np.bincount(row, minlength=self.n_species) / len(row)
        return vegard_lattice_constant(self.lattice.kind, self.elements, fractions.tolist())

    def energies(self, occupation) -> np.ndarray:
        """Total energies (eV per cell) of configurations ``(..., n_sites)``; raises CalculatorError."""
        occupation = check_occupation("occupation", occupation, self.lattice, self.n_species)
        rows = occupation.reshape(-1, self.lattice.n_sites)
        out = np.array([self._energy(row, k, len(rows)) for k, row in enumerate(rows)], dtype=np.float64)
        return out.reshape(occupation.shape[:-1])

    def _energy(self, row: np.ndarray, index: int, total: int) -> float:
        key = row.astype(np.int8).tobytes()
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        atoms = to_atoms(self.lattice, row, self.elements, self._constant(row))
        atoms.calc = self.calculator
        name = type(self.calculator).__name__
        try:
            energy = float(atoms.get_potential_energy())
        except Exception as exc:
            raise CalculatorError(f"calculator: {name} raised {type(exc).__name__}: {exc} on configuration "
                                  f"{index} of {total}", index) from exc
        finally:
            atoms.calc = None
        self.calls += 1
        if not math.isfinite(energy):
            raise CalculatorError(f"calculator: {name} returned {energy} eV for configuration {index} of "
                                  f"{total}", index)
        if self.cache_size:
            self._cache[key] = energy
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return energy

    def swap_deltas(self, occupation: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Energy change of each swap as the difference of two whole-cell energies (not local: costly)."""
        rows = np.arange(len(occupation))
        after = occupation.copy()
        after[rows, i], after[rows, j] = occupation[rows, j], occupation[rows, i]
        return self.energies(after) - self.energies(occupation)
