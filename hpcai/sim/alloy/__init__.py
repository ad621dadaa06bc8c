"""Alloy order-disorder on a lattice: cells, energies, canonical Monte Carlo, observables, transitions.

``lattice``
    :class:`Lattice` (sc, bcc, fcc supercells with exact neighbour shells), sublattices of B2, L1_0, L1_2,
    occupation arrays at a composition.
``energy``
    The :class:`EnergyModel` protocol the Monte Carlo calls; :class:`SiteEnergyModel` (per-site energies
    from neighbour-shell counts, swap energies from the affected sites only) and :class:`PairModel`.
``local``
    :class:`SiteTable`: a per-site model's energies tabulated per environment (counts only).
``memo``
    :class:`EnvironmentKeys` / :class:`EnergyMemo`: every site environment as an exact integer key, and with
    triplet features its energy computed once per key met.
``state``
    :class:`SwapState`: every chain's environment keys and site energies kept up to date (from the table or
    the memo), so a Monte Carlo trial is a few look-ups; numpy for batches, compiled blocks where numba is.
``reference`` / ``atoms``
    :class:`AseReference`: energies from any ASE calculator (default EMT), eV per cell; ``ase.Atoms``
    conversion. ASE is optional (``pip install 'hpcai[alloy]'``) and imported only there.
``montecarlo``
    :class:`MonteCarlo`: many chains at once, Kawasaki swaps, Metropolis, annealing, replica exchange.
``observables`` / ``reweighting`` / ``transition``
    Order parameters, Warren-Cowley SRO, C_v, Binder cumulant with jackknife/blocking errors; multiple-
    histogram reweighting;
    :func:`temperature_scan` and T_c from Binder-cumulant crossings, against exact Ising values.
"""
from .atoms import from_atoms, to_atoms, vegard_lattice_constant
from .energy import EnergyModel, IsingCoupling, PairModel, SiteEnergyModel, swap_delta_mismatch
from .lattice import (LATTICES, STRUCTURES, Lattice, ordered_occupation, random_occupation, species_counts,
                      sublattices)
from .local import SiteTable
from .memo import EnergyMemo, EnvironmentKeys
from .montecarlo import KB_EV, MonteCarlo, exchange_permutation
from .observables import (Estimate, autocorrelation_time, binder_cumulant, block_means, blocking_error,
                          heat_capacity, jackknife, order_parameter, warren_cowley)
from .reference import AseReference, CalculatorError, emt_elements
from .reweighting import Reweighting
from .state import SwapState
from .transition import (ISING_KC, Crossing, Scan, binder_crossing, critical_temperature,
                         ising_critical_temperature, reweight_scan, temperature_scan, transition_temperatures)

__all__ = ["ISING_KC", "KB_EV", "LATTICES", "STRUCTURES", "AseReference", "CalculatorError", "Crossing",
           "EnergyMemo", "EnergyModel", "EnvironmentKeys", "Estimate", "IsingCoupling", "Lattice", "MonteCarlo", "PairModel", "Reweighting",
           "Scan", "SiteEnergyModel", "SiteTable", "SwapState", "autocorrelation_time", "binder_crossing",
           "binder_cumulant",
           "block_means", "blocking_error", "critical_temperature", "emt_elements", "exchange_permutation",
           "from_atoms", "heat_capacity", "ising_critical_temperature", "jackknife", "order_parameter",
           "ordered_occupation", "random_occupation", "reweight_scan", "species_counts", "sublattices",
           "swap_delta_mismatch", "temperature_scan", "to_atoms", "transition_temperatures",
           "vegard_lattice_constant", "warren_cowley"]
