r"""Geometry of electron diffraction: lattices, the electron wavelength, zone axes and Laue zones.

Conventions [Williams & Carter 2009, ch. 11-12]. The direct lattice ``A`` holds the cell vectors
:math:`\mathbf a, \mathbf b, \mathbf c` as rows (Å), :math:`\mathbf a` along x and :math:`\mathbf b` in the
xy plane; the reciprocal lattice is :math:`B = (A^{-1})^T` (rows :math:`\mathbf a^*, \mathbf b^*,
\mathbf c^*`, 1/Å, no factor :math:`2\pi`), so :math:`\mathbf g_{hkl} = (h, k, l)\,B` and
:math:`d_{hkl} = 1/|\mathbf g_{hkl}|`. A zone axis :math:`[uvw]` is the direct-lattice vector
:math:`\mathbf t = (u, v, w)\,A`; it points back towards the electron source (the beam travels along
:math:`-\mathbf t`). Reflections with :math:`hu + kv + lw = n` form the n-th order Laue zone, a plane of the
reciprocal lattice at height :math:`n/|\mathbf t|` along :math:`\hat{\mathbf t}` (n = 0: ZOLZ, n = 1: FOLZ).

Each zone axis carries a right-handed detector frame :math:`(\hat x, \hat y, \hat z)`: :math:`\hat z` along
:math:`\mathbf t`, :math:`\hat y` along the reference reflection ``y_hkl`` of the ZOLZ (by default the shortest
one) and :math:`\hat x = \hat y \times \hat z`.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math

import numpy as np

from ... import checks

__all__ = ["ELECTRON_MASS", "ELEMENTARY_CHARGE", "LIGHT_SPEED", "PLANCK", "ZoneAxis", "direct_lattice",
           "electron_wavelength", "lorentz_factor", "reciprocal_lattice", "zone_axes", "zone_axis"]

# CODATA 2018 (SI, exact or recommended values)
PLANCK = 6.62607015e-34  # J s
ELEMENTARY_CHARGE = 1.602176634e-19  # C
ELECTRON_MASS = 9.1093837015e-31  # kg
LIGHT_SPEED = 299792458.0  # m/s


def direct_lattice(a: float, b: float, c: float, alpha: float, beta: float, gamma: float) -> np.ndarray:
    """Cell vectors as rows (Å) from lengths (Å) and angles (degrees): a along x, b in the xy plane."""
    a, b, c = (checks.number(n, v, 0.0, low_open=True) for n, v in zip("abc", (a, b, c)))
    alpha, beta, gamma = (checks.number(n, v, 0.0, 180.0, low_open=True, high_open=True)
                          for n, v in zip(("alpha", "beta", "gamma"), (alpha, beta, gamma)))
    ca, cb, cg = (math.cos(math.radians(x)) for x in (alpha, beta, gamma))
    sg = math.sin(math.radians(gamma))
    cx = cb
    cy = (ca - cb * cg) / sg
    cz2 = 1.0 - cx * cx - cy * cy
    if cz2 <= 0:
        raise ValueError(f"alpha, beta, gamma: the angles ({alpha:g}, {beta:g}, {gamma:g}) do not make a cell")
    return np.array([[a, 0.0, 0.0], [b * cg, b * sg, 0.0], [c * cx, c * cy, c * math.sqrt(cz2)]])


def reciprocal_lattice(lattice) -> np.ndarray:
    """Reciprocal cell vectors as rows (1/Å, crystallographers' convention without 2π): ``inv(A).T``."""
    return np.linalg.inv(np.asarray(lattice, dtype=np.float64)).T


def _voltage(voltage_kV) -> float:
    return checks.number("voltage_kV", voltage_kV, 0.0, low_open=True) * 1e3


def electron_wavelength(voltage_kV: float) -> float:
    r"""Relativistic electron wavelength in Å [Williams & Carter 2009, ch. 1]:
    :math:`\lambda = h / \sqrt{2 m_0 e V (1 + eV / 2 m_0 c^2)}` (0.037014 Å at 100 kV)."""
    ev = ELEMENTARY_CHARGE * _voltage(voltage_kV)
    momentum = math.sqrt(2 * ELECTRON_MASS * ev * (1 + ev / (2 * ELECTRON_MASS * LIGHT_SPEED ** 2)))
    return PLANCK / momentum * 1e10


def lorentz_factor(voltage_kV: float) -> float:
    r""":math:`\gamma = 1 + eV/m_0c^2`: the relativistic mass factor that scales electron scattering factors."""
    return 1.0 + ELEMENTARY_CHARGE * _voltage(voltage_kV) / (ELECTRON_MASS * LIGHT_SPEED ** 2)


def _integer_vector(name: str, value) -> np.ndarray:
    vec = np.asarray(value)
    if vec.shape != (3,) or vec.dtype.kind not in "iu" or not vec.any():
        raise ValueError(f"{name}: expected three integers, not all zero, got {value!r}")
    return vec.astype(np.int64)


@functools.lru_cache(maxsize=8)
def _small_indices(bound: int) -> np.ndarray:
    """All integer triples in ``[-bound, bound]^3`` except zero."""
    grid = np.array(list(itertools.product(range(-bound, bound + 1), repeat=3)), dtype=np.int64)
    return grid[np.abs(grid).sum(1) > 0]


@dataclasses.dataclass(frozen=True, eq=False)
class ZoneAxis:
    """A zone axis of one lattice, with its detector frame and a basis of its Laue zones.

    Attributes
    ----------
    uvw : (3,) int
        Zone axis (direct-lattice direction, towards the source).
    y_hkl : (3,) int
        ZOLZ reflection that defines the detector's +y direction.
    lattice : (3, 3) float
        Direct lattice (rows, Å) the indices refer to.
    frame : (3, 3) float
        Unit vectors x, y, z (rows) of the detector frame in the lattice's Cartesian coordinates.
    zolz_basis : (2, 3) int
        Two reflections spanning the ZOLZ (``hu + kv + lw = 0``).
    folz_offset : (3,) int
        A reflection with ``hu + kv + lw = 1``; Laue zone n is ``n * folz_offset + ZOLZ``.
    """

    uvw: np.ndarray
    y_hkl: np.ndarray
    lattice: np.ndarray
    frame: np.ndarray
    zolz_basis: np.ndarray
    folz_offset: np.ndarray

    @property
    def y_direction(self) -> np.ndarray:
        r"""The crystal direction that lies along the detector's +y, as direct-lattice components (3,) float.

        The real-space vector :math:`u\,\mathbf a + v\,\mathbf b + w\,\mathbf c` parallel to
        :math:`\hat y` (so perpendicular to the zone axis), scaled so that its largest component is 1:
        :math:`(u, v, w) \propto (h, k, l)\, G^*` with :math:`G^* = B B^T` the reciprocal metric tensor and
        (h, k, l) = ``y_hkl`` [International Tables Vol. B, sec. 1.1.3]. Real-valued, because the normal of a
        lattice plane is a rational lattice direction only in special cells (cubic: [hkl] itself; hexagonal:
        (100) -> [2 1 0]). This is the ORNL data set's ``y_dirs`` meaning (see :data:`~.dataset.LABELS`).
        """
        uvw = self.frame[1] @ np.linalg.inv(self.lattice)
        return uvw / np.abs(uvw).max()

    @property
    def laue_spacing(self) -> float:
        r"""Distance between successive Laue zones, :math:`1/|\mathbf t|` (1/Å)."""
        return 1.0 / float(np.linalg.norm(self.uvw @ self.lattice))

    def project(self, hkl) -> np.ndarray:
        """Reflections ``hkl`` (n, 3) as (x, y, z) components in the detector frame (1/Å)."""
        return np.asarray(hkl) @ reciprocal_lattice(self.lattice) @ self.frame.T

    def reflections(self, order: int, radius: float) -> np.ndarray:
        """Miller indices (n, 3) of Laue zone ``order`` whose in-plane component is at most ``radius`` (1/Å)."""
        order = checks.integer("order", order)
        radius = checks.number("radius", radius, 0.0)
        g1, g2 = self.project(self.zolz_basis)[:, :2]
        centre = order * self.project(self.folz_offset[None])[0, :2]
        basis = np.array([g1, g2]).T
        i0, j0 = np.linalg.solve(basis, -centre)  # lattice coordinates of the zone's projected origin
        area = abs(np.linalg.det(basis))
        ri, rj = radius * np.linalg.norm(g2) / area, radius * np.linalg.norm(g1) / area
        i = np.arange(math.floor(i0 - ri), math.ceil(i0 + ri) + 1)
        j = np.arange(math.floor(j0 - rj), math.ceil(j0 + rj) + 1)
        i, j = (m.ravel() for m in np.meshgrid(i, j, indexing="ij"))
        inside = np.hypot(*(centre[:, None] + basis @ np.array([i, j]))) <= radius
        hkl = order * self.folz_offset + np.outer(i[inside], self.zolz_basis[0]) + \
            np.outer(j[inside], self.zolz_basis[1])
        return hkl.astype(np.int64)


def zone_axis(lattice, uvw, y_hkl=None) -> ZoneAxis:
    """The zone axis ``uvw`` of ``lattice`` (3x3 rows, Å) with +y along ``y_hkl`` (default: shortest ZOLZ g)."""
    lattice = checks.array("lattice", np.asarray(lattice, dtype=np.float64), shape=(3, 3), finite=True)
    uvw = _integer_vector("uvw", uvw)
    uvw = uvw // math.gcd(*(int(x) for x in uvw))
    recip = reciprocal_lattice(lattice)
    candidates = _small_indices(2 * int(np.abs(uvw).max()) + 1)
    in_plane = candidates[candidates @ uvw == 0]
    lengths = np.linalg.norm(in_plane @ recip, axis=1)
    order = np.lexsort((-in_plane[:, 2], -in_plane[:, 1], -in_plane[:, 0], np.abs(in_plane).sum(1),
                        np.round(lengths, 9)))
    in_plane = in_plane[order]
    h1 = in_plane[0]
    h2 = next(h for h in in_plane if np.array_equal(np.abs(np.cross(h1, h)), np.abs(uvw)))
    if y_hkl is None:
        y_hkl = h1
    else:
        y_hkl = _integer_vector("y_hkl", y_hkl)
        if int(y_hkl @ uvw) != 0:
            raise ValueError(f"y_hkl: expected a reflection of the zero-order Laue zone of {uvw.tolist()} "
                             f"(hu + kv + lw = 0), got {y_hkl.tolist()}")
    z = uvw @ lattice
    y = y_hkl @ recip
    z, y = z / np.linalg.norm(z), y / np.linalg.norm(y)
    frame = np.array([np.cross(y, z), y, z])
    h3 = next(h for h in candidates if h @ uvw == 1)
    zone = ZoneAxis(uvw, y_hkl, lattice, frame, np.array([h1, h2]), h3)
    g1, g2, g3 = zone.project(np.array([h1, h2, h3]))[:, :2]  # move h3 to the smallest in-plane offset
    ci, cj = np.round(np.linalg.solve(np.array([g1, g2]).T, g3)).astype(np.int64)
    return dataclasses.replace(zone, folz_offset=h3 - ci * h1 - cj * h2)


def _canonical(uvw: np.ndarray) -> np.ndarray:
    """``uvw`` or ``-uvw``, whichever has its first non-zero index positive."""
    return uvw if uvw[np.flatnonzero(uvw)[0]] > 0 else -uvw


def zone_axes(crystal, count: int = 3, max_index: int = 2) -> list:
    """The ``count`` shortest symmetry-inequivalent, linearly independent zone axes of ``crystal``.

    Candidates are the directions with indices up to ``max_index``, shortest lattice vector first (the
    densest zero-order Laue zone, i.e. the most spots). Two directions are equivalent when a rotation of
    the crystal's point group (``crystal.rotations``) maps one onto plus or minus the other, so a cubic
    crystal gets [001], [011], [111] rather than three views of the same cube face.
    """
    count = checks.integer("count", count, 1, 3)
    max_index = checks.integer("max_index", max_index, 1, 6)
    lattice, rotations = np.asarray(crystal.lattice), np.asarray(crystal.rotations)
    candidates = _small_indices(max_index)
    candidates = np.array([_canonical(u) for u in candidates
                           if math.gcd(*(int(x) for x in u)) == 1 and u[np.flatnonzero(u)[0]] > 0])
    lengths = np.round(np.linalg.norm(candidates @ lattice, axis=1), 9)
    candidates = candidates[np.lexsort((-candidates[:, 0], -candidates[:, 1], -candidates[:, 2],
                                        np.abs(candidates).sum(1), lengths))]  # ties: [001] before [100]
    chosen = []
    for distinct in (True, False):  # if symmetry leaves too few classes, accept equivalent directions
        for uvw in candidates:
            images = rotations @ uvw
            if any(np.array_equal(uvw, u) for u in chosen) or (distinct and any(
                    (images == u).all(1).any() or (images == -u).all(1).any() for u in chosen)):
                continue
            if len(chosen) == 2 and round(np.linalg.det(np.array([*chosen, uvw], float))) == 0:
                continue
            chosen.append(uvw)
            if len(chosen) == count:
                return [zone_axis(lattice, u) for u in chosen]
    raise ValueError(f"max_index: found only {len(chosen)} independent zone axes up to index {max_index}")
