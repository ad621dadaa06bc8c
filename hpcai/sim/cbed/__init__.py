"""Convergent-beam electron diffraction (CBED): crystals, kinematic patterns and the ORNL-layout data set.

``crystal``: crystals from a space group (random, spglib's symmetry database) or from ASE / CIF files;
``geometry``: lattices, electron wavelength, zone axes and Laue zones; ``scattering``: Kirkland electron
scattering factors and structure factors; ``pattern``: kinematic CBED patterns with thickness fringes, dose
noise and the ORNL preprocessing; ``dataset``: parallel generation, validation and streaming of HDF5 files
in the layout of the ORNL CBED data set (Laanait et al. 2019).
"""
from .crystal import (CRYSTAL_SYSTEMS, DEFAULT_ELEMENTS, LATTICE_SHAPES, Crystal, cell_parameters,
                      crystal_from_atoms, crystal_system, hill_formula, random_crystal, read_crystal,
                      space_group_of, symmetry_operations)
from .dataset import (LABELS, SPLITS, STACK, CBEDFileError, CBEDFiles, WorkItem, check_file, dataset_files,
                      generate_dataset, make_crystal, plan_files, plan_materials, read_sample, sample_labels)
from .geometry import (ZoneAxis, direct_lattice, electron_wavelength, lorentz_factor, reciprocal_lattice,
                       zone_axes, zone_axis)
from .pattern import Pattern, PatternSettings, Stack, poisson_noise, preprocess, simulate_pattern, simulate_stack
from .scattering import (ELEMENTS, SYMBOLS, atomic_number, electron_scattering_factor, scattering_table,
                         structure_factors)

__all__ = [
    "CRYSTAL_SYSTEMS", "DEFAULT_ELEMENTS", "ELEMENTS", "LABELS", "LATTICE_SHAPES", "SPLITS", "STACK", "SYMBOLS",
    "CBEDFileError", "CBEDFiles", "Crystal", "Pattern", "PatternSettings", "Stack", "WorkItem", "ZoneAxis",
    "atomic_number", "cell_parameters", "check_file", "crystal_from_atoms", "crystal_system", "dataset_files",
    "direct_lattice", "electron_scattering_factor", "electron_wavelength", "generate_dataset", "hill_formula",
    "lorentz_factor", "make_crystal", "plan_files", "plan_materials", "poisson_noise", "preprocess", "random_crystal",
    "read_crystal", "read_sample", "reciprocal_lattice", "sample_labels", "scattering_table", "simulate_pattern",
    "simulate_stack", "space_group_of", "structure_factors", "symmetry_operations", "zone_axes", "zone_axis",
]
