r"""Electron scattering factors and kinematic structure factors.

The atomic scattering amplitude for fast electrons is Kirkland's 12-parameter fit to relativistic
Hartree–Fock calculations [Kirkland 2010, Appendix C],

.. math::
    f_e(q) = \sum_{i=1}^{3} \frac{a_i}{q^2 + b_i} + \sum_{i=1}^{3} c_i\, e^{-d_i q^2},

with :math:`q = 1/d = 2\sin\theta/\lambda` in 1/Å and :math:`f_e` in Å, for Z = 1–103. The coefficients are
shipped in ``kirkland.json`` next to this module.

Provenance of ``kirkland.json``: the 12 parameters per element are Kirkland's parametrisation of the electron
scattering factors, published in E. J. Kirkland, *Advanced Computing in Electron Microscopy*, 2nd ed.
(Springer, 2010), Appendix C: coefficients of a least-squares fit to relativistic Hartree–Fock scattering
factors, valid to q = 12 1/Å. They are fitted physical parameters (data about atoms, not code); the file holds
only those numbers, transcribed from the ``fparams`` table of Kirkland's own program (computem) and checked
against abTEM's copy (its header fields ``reference``, ``transcribed_from`` and ``provenance`` say so), and
no code of either program. Cite Kirkland (2010) when results depend on them. The tests compare the table
with an independent fit (Peng et al. 1996, below) as a check of the transcription. The
structure factor of reflection :math:`\mathbf g = h\mathbf a^* + k\mathbf b^* + l\mathbf c^*` is
[Williams & Carter 2009, ch. 13; the Debye–Waller factor as in International Tables Vol. C, sec. 6.1.1.3]

.. math::
    F(\mathbf g) = \sum_j f_{e,Z_j}(|\mathbf g|)\, e^{-B_j s^2}\, e^{2\pi i (h x_j + k y_j + l z_j)},
    \qquad s = |\mathbf g|/2,

summed over every atom of the cell, so extinctions (lattice centring, glides, screws) cancel by themselves.

References
----------
Kirkland, E. J. (2010). Advanced Computing in Electron Microscopy, 2nd ed. Springer, Appendix C.
Williams, D. B. and Carter, C. B. (2009). Transmission Electron Microscopy, 2nd ed. Springer, ch. 13, 16.
Peng, L.-M., Ren, G., Dudarev, S. L. and Whelan, M. J. (1996). Acta Cryst. A52, 257-276 (International
Tables Vol. C, Table 4.3.2.2: an independent fit, used by the tests as a cross-check of the table).
"""
from __future__ import annotations

import functools
import json
import numbers
from importlib import resources

import numpy as np

from ... import checks
from .geometry import reciprocal_lattice

__all__ = ["ELEMENTS", "SYMBOLS", "atomic_number", "electron_scattering_factor", "scattering_table",
           "structure_factors"]

TABLE_FILE = "kirkland.json"


@functools.lru_cache(maxsize=1)
def scattering_table() -> dict:
    """The shipped Kirkland table: its header fields plus ``parameters`` as a (103, 12) float array."""
    with resources.files(__package__).joinpath(TABLE_FILE).open("r", encoding="utf-8") as f:
        table = json.load(f)
    table["parameters"] = np.array(table["parameters"], dtype=np.float64)
    if table["parameters"].shape != (len(table["symbols"]), 12):
        raise ValueError(f"{TABLE_FILE}: expected 12 coefficients per element, got {table['parameters'].shape}")
    return table


SYMBOLS: tuple = tuple(scattering_table()["symbols"])  # SYMBOLS[Z - 1] is the symbol of atomic number Z
ELEMENTS: dict = {symbol: z for z, symbol in enumerate(SYMBOLS, start=1)}  # symbol -> atomic number


def atomic_number(element, name: str = "element") -> int:
    """``element`` (a symbol such as ``"Cu"`` or an atomic number) as an atomic number in 1..103."""
    if isinstance(element, str):
        if element not in ELEMENTS:
            raise ValueError(f"{name}: expected an element symbol H..{SYMBOLS[-1]}, got {element!r}")
        return ELEMENTS[element]
    if isinstance(element, numbers.Integral) and not isinstance(element, (bool, np.bool_)):
        return checks.integer(name, element, 1, len(SYMBOLS))
    raise ValueError(f"{name}: expected an element symbol or an atomic number, got {element!r}")


def electron_scattering_factor(z, q) -> np.ndarray:
    r"""Kirkland's :math:`f_e(q)` in Å for atomic numbers ``z`` at ``q = 1/d`` (1/Å); arrays broadcast.

    Non-relativistic, as tabulated: multiply by the Lorentz factor :math:`\gamma` for the electron's
    relativistic mass [Kirkland 2010, ch. 5].
    """
    z = np.asarray(z)
    if z.size and (z.min() < 1 or z.max() > len(SYMBOLS)):
        raise ValueError(f"z: expected atomic numbers in [1, {len(SYMBOLS)}], got {z.min()}..{z.max()}")
    p = scattering_table()["parameters"][z - 1]  # (..., 12)
    q2 = np.asarray(q, dtype=np.float64)[..., None] ** 2
    lorentz = p[..., 0:6:2] / (q2 + p[..., 1:6:2])
    gauss = p[..., 6:12:2] * np.exp(-q2 * p[..., 7:12:2])
    return lorentz.sum(-1) + gauss.sum(-1)


def structure_factors(crystal, hkl, debye_waller: float = 0.5) -> np.ndarray:
    r"""Complex structure factors :math:`F(\mathbf g)` in Å (non-relativistic) of ``crystal`` for ``hkl``.

    Parameters
    ----------
    crystal : Crystal
        Any object with ``lattice`` (3x3 rows a, b, c in Å), ``positions`` (n, 3 fractional) and
        ``numbers`` (n atomic numbers).
    hkl : array (m, 3) of int
        Miller indices in the crystal's own cell.
    debye_waller : float
        Isotropic Debye–Waller B in Å² applied to every atom (:math:`e^{-B s^2}`, :math:`s = |g|/2`).
    """
    debye_waller = checks.number("debye_waller", debye_waller, 0.0)
    hkl = np.atleast_2d(np.asarray(hkl))
    checks.array("hkl", hkl, ndim=2, shape=(None, 3), kinds="iu")
    if not len(hkl):
        return np.zeros(0, complex)
    q = np.linalg.norm(hkl @ reciprocal_lattice(crystal.lattice), axis=1)
    damping = np.exp(-debye_waller * (q / 2) ** 2)
    species, index = np.unique(crystal.numbers, return_inverse=True)
    f = electron_scattering_factor(species[None, :], q[:, None]) * damping[:, None]  # (m, species)
    one_hot = (index[:, None] == np.arange(len(species))[None, :]).astype(complex)  # (atoms, species)
    return (f * (_phases(hkl, crystal.positions) @ one_hot)).sum(axis=1)


def _phases(hkl: np.ndarray, positions: np.ndarray) -> np.ndarray:
    r""":math:`e^{2\pi i (h x_j + k y_j + l z_j)}` as (m, atoms): a product of three small per-axis tables
    of :math:`e^{2\pi i n x_j}`, which costs two complex products per entry instead of one complex exp."""
    result = None
    for axis in range(3):
        low = int(hkl[:, axis].min())
        n = np.arange(low, int(hkl[:, axis].max()) + 1)
        table = np.exp(2j * np.pi * np.outer(n, positions[:, axis]))[hkl[:, axis] - low]
        result = table if result is None else result * table
    return result
