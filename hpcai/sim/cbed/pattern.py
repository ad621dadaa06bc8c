r"""Kinematic CBED patterns: disks of the zero- and first-order Laue zones on a pixel detector.

A convergent probe of semi-angle :math:`\alpha` is a cone of plane waves; the wave tilted by
:math:`\mathbf K` (in-plane, 1/Å, :math:`|\mathbf K| \le \alpha/\lambda`) makes every reflection
:math:`\mathbf g` land at :math:`\mathbf g_\perp + \mathbf K` on the detector, so each reflection becomes a
disk of radius :math:`\alpha/\lambda` around its projected position. Within a disk the excitation error
changes with the tilt [Williams & Carter 2009, ch. 12 and 20],

.. math::
    s_g(\mathbf K) = -\frac{2\,\mathbf k\cdot\mathbf g + g^2}{2 k}, \qquad
    \mathbf k = (\mathbf K, -\sqrt{k^2 - K^2}), \quad k = 1/\lambda,

and the kinematic intensity of a crystal of thickness t is [Williams & Carter 2009, ch. 13, the
kinematic limit of the Howie–Whelan equations]

.. math::
    I_g(\mathbf K) = \Big(\frac{\lambda\gamma |F_g|}{V}\Big)^2 \frac{\sin^2(\pi t s_g)}{(\pi s_g)^2}

(:math:`F_g` from :mod:`.scattering`, :math:`\gamma` the Lorentz factor, V the cell volume), so disks carry
thickness fringes and first-order Laue zone reflections light up only near the Ewald sphere, as the HOLZ
ring. The direct disk has intensity 1. As in the ORNL data set [Laanait et al. 2019], the semi-angle is
:math:`\alpha = \lambda / (4 d_{hkl})` with :math:`d_{hkl}` the largest spacing among the reflections
visible on the axis (structure factor not extinct), so neighbouring disks do not overlap.

Pixel ``image[i, j]`` sits at :math:`x = (j - (N-1)/2)\,p`, :math:`y = (i - (N-1)/2)\,p` in the zone's
detector frame (:class:`~.geometry.ZoneAxis`), p the pixel size in 1/Å: the direct beam is centred
between the four middle pixels, so a 4-fold axis maps the image onto ``numpy.rot90`` of itself exactly.

References
----------
Williams, D. B. and Carter, C. B. (2009). Transmission Electron Microscopy, 2nd ed. Springer.
Laanait, N., Romero, J., Yin, J., Young, M. T., Treichler, S., Starchenko, V., Borisevich, A., Sergeev, A.
and Matheson, M. (2019). Exascale deep learning for scientific inverse problems. arXiv:1909.11150
(data: Laanait, Borisevich and Yin, doi:10.13139/OLCF/1510313).
"""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from ... import checks
from .geometry import ZoneAxis, electron_wavelength, lorentz_factor, zone_axes
from .scattering import electron_scattering_factor, structure_factors

__all__ = ["Pattern", "PatternSettings", "Stack", "poisson_noise", "preprocess", "simulate_pattern",
           "simulate_stack"]


@dataclasses.dataclass(frozen=True)
class PatternSettings:
    r"""Microscope, specimen and detector settings of a simulation.

    Attributes
    ----------
    voltage_kV : float
        Accelerating voltage (the ``energy_keV`` label).
    pixels : int
        Detector size N (N x N pixels).
    half_width : float
        Reciprocal distance from the detector centre to its edge, 1/Å (1.25 1/Å is 46 mrad at 100 kV).
    thickness : float
        Specimen thickness t, Å.
    debye_waller : float
        Isotropic Debye–Waller B, Å², for every atom.
    dose : float or None
        Electrons in the incident probe (spread over the direct disk) for Poisson noise; None: no noise.
    holz : bool
        Whether first-order Laue zone reflections are drawn.
    extinct : float
        A reflection counts as extinct when :math:`|F_g|` is below this fraction of :math:`\sum_j |f_j|`.
    """

    voltage_kV: float = 100.0
    pixels: int = 512
    half_width: float = 1.25
    thickness: float = 200.0
    debye_waller: float = 0.5
    dose: float | None = None
    holz: bool = True
    extinct: float = 1e-6

    def __post_init__(self):
        checks.number("voltage_kV", self.voltage_kV, 0.0, low_open=True)
        checks.integer("pixels", self.pixels, 8)
        checks.number("half_width", self.half_width, 0.0, low_open=True)
        checks.number("thickness", self.thickness, 0.0, low_open=True)
        checks.number("debye_waller", self.debye_waller, 0.0)
        if self.dose is not None:
            checks.number("dose", self.dose, 0.0, low_open=True)
        checks.choice("holz", self.holz, (True, False))
        checks.number("extinct", self.extinct, 0.0, 1.0, low_open=True, high_open=True)

    @property
    def wavelength(self) -> float:
        """Electron wavelength, Å."""
        return electron_wavelength(self.voltage_kV)

    @property
    def pixel_size(self) -> float:
        """Reciprocal size of one pixel, 1/Å."""
        return 2.0 * self.half_width / self.pixels


@dataclasses.dataclass(frozen=True, eq=False)
class Pattern:
    r"""One simulated zone-axis pattern and the reflections drawn in it.

    ``hkl`` (n, 3), ``laue_order`` (n,), ``centres`` (n, 2: x, y in 1/Å) and ``structure_factors`` (n,
    complex, Å) describe the drawn disks (the direct beam is not listed); ``semi_angle`` (rad) and
    ``d_hkl`` (Å) are :math:`\alpha = \lambda/4d` and that largest visible spacing.
    """

    image: np.ndarray
    zone: ZoneAxis
    hkl: np.ndarray
    laue_order: np.ndarray
    centres: np.ndarray
    structure_factors: np.ndarray
    semi_angle: float
    d_hkl: float
    settings: PatternSettings

    @property
    def disk_radius(self) -> float:
        r"""Disk radius in 1/Å, :math:`\alpha/\lambda`."""
        return self.semi_angle / self.settings.wavelength

    def to_pixels(self, xy) -> np.ndarray:
        """Detector coordinates (x, y) in 1/Å as fractional pixel indices (column j, row i)."""
        return np.asarray(xy) / self.settings.pixel_size + (self.settings.pixels - 1) / 2.0


@dataclasses.dataclass(frozen=True, eq=False)
class Stack:
    """The patterns of several zone axes: ``data`` (k, N, N) float32 (noisy if a dose was set)."""

    data: np.ndarray
    patterns: list


def _bound(crystal, q, debye_waller) -> np.ndarray:
    r""":math:`\sum_j |f_j(q)| e^{-B q^2/4}`: the largest |F| any arrangement of the atoms could give."""
    species, counts = np.unique(crystal.numbers, return_counts=True)
    return electron_scattering_factor(species[None, :], q[:, None]) @ counts * np.exp(-debye_waller * q * q / 4)


def _visible(crystal, zone, settings, radius):
    """ZOLZ reflections within ``radius`` and their structure factors, extinct ones removed."""
    hkl = zone.reflections(0, radius)
    hkl = hkl[np.abs(hkl).sum(1) > 0]
    xyz = zone.project(hkl)
    F = structure_factors(crystal, hkl, settings.debye_waller)
    keep = np.abs(F) > settings.extinct * _bound(crystal, np.linalg.norm(xyz, axis=1), settings.debye_waller)
    return hkl[keep], xyz[keep], F[keep]


def _largest_spacing(crystal, zone, settings) -> float:
    """:math:`d_{hkl}` of the shortest visible ZOLZ reflection (searching outwards if none is close)."""
    radius = 3.0 * np.linalg.norm(zone.project(zone.zolz_basis)[:, :2], axis=1).max()
    for _ in range(6):
        _, xyz, _ = _visible(crystal, zone, settings, radius)
        if len(xyz):
            return 1.0 / float(np.linalg.norm(xyz, axis=1).min())
        radius *= 2.0
    raise ValueError(f"crystal: every reflection of zone {zone.uvw.tolist()} is extinct: no disks to draw")


def _excited_folz(crystal, zone, settings, radius, disk):
    """First-order Laue zone reflections within ``radius`` whose disk meets the Ewald sphere (|s| < 2/t)."""
    hkl = zone.reflections(1, radius)
    xyz = zone.project(hkl)
    k0 = 1.0 / settings.wavelength
    s0 = xyz[:, 2] - (xyz * xyz).sum(1) / (2.0 * k0)  # at the disk centre: k = (0, 0, -k0)
    spread = disk * np.hypot(xyz[:, 0], xyz[:, 1]) / k0 * 1.05  # how much s changes across the disk
    near = np.abs(s0) <= spread + 2.0 / settings.thickness
    hkl, xyz = hkl[near], xyz[near]
    F = structure_factors(crystal, hkl, settings.debye_waller)
    keep = np.abs(F) > settings.extinct * _bound(crystal, np.linalg.norm(xyz, axis=1), settings.debye_waller)
    return hkl[keep], xyz[keep], F[keep]


@functools.lru_cache(maxsize=16)
def _stamp(radius_px: float) -> tuple:
    """Integer pixel offsets (ox, oy) that can fall inside a disk of ``radius_px`` wherever its centre lies
    within half a pixel of the base pixel: one stamp per disk size, shared by every disk of a pattern."""
    half = math.ceil(radius_px + 1.0)
    oy, ox = np.mgrid[-half:half + 1, -half:half + 1]
    near = np.hypot(ox, oy) <= radius_px + 0.75
    return ox[near].astype(np.float32), oy[near].astype(np.float32)


def _render(xyz, weight, disk, settings, fringes=True) -> np.ndarray:
    r"""Sum of disks of radius ``disk`` (1/Å) centred at ``xyz[:, :2]`` on an N x N detector, each with
    intensity ``weight`` times the thickness fringes :math:`\sin^2(\pi t s)/(\pi s)^2` of its reflection.

    Every disk is evaluated on one shared stamp of pixel offsets around its nearest pixel (its sub-pixel
    position enters through the offsets), all disks at once as (disks, stamp) arrays in float32, and
    scattered into the image with a single bincount.
    """
    n_pix, size = settings.pixels, settings.pixel_size
    radius_px = disk / size
    ox, oy = _stamp(round(radius_px, 6))
    centre = xyz[:, :2] / size + (n_pix - 1) / 2.0
    base = np.rint(centre)
    frac = (centre - base).astype(np.float32)
    dx, dy = ox - frac[:, :1], oy - frac[:, 1:]  # (disks, stamp) pixel offsets from the disk centre
    col = base[:, :1].astype(np.int64) + ox.astype(np.int64)
    row = base[:, 1:].astype(np.int64) + oy.astype(np.int64)
    keep = (dx * dx + dy * dy <= np.float32(radius_px * radius_px)) & \
        (col >= 0) & (col < n_pix) & (row >= 0) & (row < n_pix)
    values = np.broadcast_to(weight.astype(np.float32)[:, None], keep.shape)
    if fringes:
        k0 = 1.0 / settings.wavelength
        g = xyz.astype(np.float32)
        kx, ky = dx * np.float32(size), dy * np.float32(size)
        dot = kx * g[:, :1] + ky * g[:, 1:2]
        if np.any(xyz[:, 2] != 0):  # higher Laue zones: the Ewald sphere's curvature matters
            dot -= np.sqrt(np.float32(k0 * k0) - kx * kx - ky * ky) * g[:, 2:]
        g2 = (xyz * xyz).sum(1).astype(np.float32)[:, None]
        t = np.float32(settings.thickness)
        s = -(np.float32(2.0) * dot + g2) * np.float32(0.5 / k0)
        values = values * (t * np.sinc(t * s)) ** 2  # sin^2(pi t s) / (pi s)^2
    flat = np.where(keep, row * n_pix + col, 0)
    return np.bincount(flat.ravel(), weights=np.where(keep, values, 0).ravel(),
                       minlength=n_pix * n_pix).reshape(n_pix, n_pix)


def simulate_pattern(crystal, zone: ZoneAxis, settings: PatternSettings | None = None) -> Pattern:
    """The noise-free kinematic CBED pattern of ``crystal`` along ``zone`` (see the module docstring)."""
    settings = PatternSettings() if settings is None else settings
    if not isinstance(settings, PatternSettings):
        raise TypeError(f"settings: expected a PatternSettings, got {type(settings).__name__}")
    if not isinstance(zone, ZoneAxis):
        raise TypeError(f"zone: expected a ZoneAxis, got {type(zone).__name__}")
    d_hkl = _largest_spacing(crystal, zone, settings)
    disk = 1.0 / (4.0 * d_hkl)
    reach = settings.half_width * math.sqrt(2.0) + disk  # any disk touching the detector
    hkl, xyz, F = _visible(crystal, zone, settings, reach)
    order = np.zeros(len(hkl), np.int64)
    if settings.holz:
        hkl1, xyz1, F1 = _excited_folz(crystal, zone, settings, reach, disk)
        hkl, xyz, F = np.concatenate([hkl, hkl1]), np.concatenate([xyz, xyz1]), np.concatenate([F, F1])
        order = np.concatenate([order, np.ones(len(hkl1), np.int64)])
    scale = settings.wavelength * lorentz_factor(settings.voltage_kV) / crystal.volume
    image = _render(xyz, (scale * np.abs(F)) ** 2, disk, settings)
    image += _render(np.zeros((1, 3)), np.ones(1), disk, settings, fringes=False)
    return Pattern(image.astype(np.float32), zone, hkl, order, xyz[:, :2], F,
                   settings.wavelength * disk, d_hkl, settings)


def poisson_noise(image, counts_per_unit: float, rng) -> np.ndarray:
    """Shot noise: ``Poisson(image * counts_per_unit) / counts_per_unit`` (float32, same units as ``image``)."""
    counts_per_unit = checks.number("counts_per_unit", counts_per_unit, 0.0, low_open=True)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    lam = np.clip(np.asarray(image, dtype=np.float64), 0.0, None) * counts_per_unit
    return (rng.poisson(lam) / counts_per_unit).astype(np.float32)


def simulate_stack(crystal, settings: PatternSettings | None = None, rng=None, zones=None) -> Stack:
    """Patterns of ``crystal`` along ``zones`` (default: its three lowest-index inequivalent zone axes).

    With ``settings.dose`` set, each pattern gets Poisson noise for that many incident electrons (the
    direct disk, intensity 1, collects them), drawn from ``rng`` (a Generator or a seed).
    """
    settings = PatternSettings() if settings is None else settings
    zones = zone_axes(crystal, 3) if zones is None else list(zones)
    patterns = [simulate_pattern(crystal, zone, settings) for zone in zones]
    data = np.stack([p.image for p in patterns])
    if settings.dose is not None:
        if rng is None:
            raise ValueError("rng: expected a numpy Generator or a seed when settings.dose is set")
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        for k, p in enumerate(patterns):
            direct_pixels = math.pi * (p.disk_radius / settings.pixel_size) ** 2
            data[k] = poisson_noise(data[k], settings.dose / direct_pixels, rng)
    return Stack(data, patterns)


def preprocess(stack, size: int = 128, decades: float = 5.0) -> np.ndarray:
    r"""The ORNL input transform: log scale, clip, resize to ``size`` x ``size`` (float32 in [0, 1]).

    Each pattern is divided by its maximum, :math:`\log_{10}` is taken and clipped at ``-decades``, mapped
    linearly to [0, 1], then resized by averaging blocks (when N is a multiple of ``size``) or by linear
    interpolation. Works on (..., N, N) arrays, so on one pattern, a stack or a batch of stacks.
    """
    stack = np.asarray(stack)
    checks.array("stack", stack, kinds="fiu")
    if stack.ndim < 2 or stack.shape[-1] != stack.shape[-2]:
        raise ValueError(f"stack: expected (..., N, N) square patterns, got shape {stack.shape}")
    size = checks.integer("size", size, 1, stack.shape[-1])
    decades = checks.number("decades", decades, 0.0, low_open=True)
    x = stack.astype(np.float64)
    peak = x.max(axis=(-2, -1), keepdims=True)
    x = x / np.where(peak > 0, peak, 1.0)
    x = (np.log10(np.maximum(x, 10.0 ** -decades)) + decades) / decades
    n = x.shape[-1]
    if n % size == 0:
        f = n // size
        x = x.reshape(*x.shape[:-2], size, f, size, f).mean(axis=(-3, -1))
    else:
        from scipy import ndimage
        x = ndimage.zoom(x, (1,) * (x.ndim - 2) + (size / n, size / n), order=1)
    return x.astype(np.float32)
