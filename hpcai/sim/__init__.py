"""Simulation kernels on the array backend (numpy or cupy); they depend on :mod:`hpcai.backend` only.

``shallow_water``: global shallow-water model (spectral transform on the sphere) with the Williamson et al.
(1992) case 2 and Galewsky et al. (2004) initial conditions; ``spharm``: the spherical-harmonic transform;
``compression``: DCT codecs. Subpackages (imported on use): :mod:`hpcai.sim.alloy` (lattices, energy models,
canonical Monte Carlo, order parameters and T_c) and :mod:`hpcai.sim.cbed` (crystals, kinematic CBED
patterns, the ORNL-layout data set).
"""
from .shallow_water import INITIAL_CONDITIONS, History, ShallowWater, error_norms
from .spharm import SphericalHarmonics

__all__ = ["INITIAL_CONDITIONS", "History", "ShallowWater", "SphericalHarmonics", "error_norms"]
