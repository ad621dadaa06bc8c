r"""Spherical-harmonic transform on a Gaussian grid: FFT in longitude, Gauss–Legendre quadrature in latitude.

A field on the sphere is expanded in fully normalised spherical harmonics (triangular truncation T),

.. math:: f(\lambda, \mu) = \sum_{m=-T}^{T} \sum_{n=|m|}^{T} f_n^m \bar P_n^m(\mu) e^{im\lambda},
          \qquad \int_{-1}^{1} \bar P_n^m(\mu)^2 d\mu = 1,

with :math:`\mu = \sin\varphi` and :math:`f_n^{-m} = \overline{f_n^m}` for real fields, so only
:math:`m \ge 0` is stored [Hack & Jakob 1992, sec. 2a]. Analysis is a real FFT in longitude followed
by Gauss–Legendre quadrature in latitude; synthesis the reverse. With ``nlon >= 3T+1`` and
``nlat >= (3T+1)/2`` the quadratic terms of the shallow-water equations are transformed without aliasing
[Hack & Jakob 1992, sec. 2a and 3; Durran 2010, *Numerical Methods for Fluid Dynamics*, sec. 6.4].

Latitudes run **north to south** (``lat[0] > 0``), longitudes east from 0 degrees.

Storage and speed. The Legendre sums dominate the cost. They are done as batched matrix products, one small
real GEMM per (parity, m), using the equatorial symmetry :math:`\bar P_n^m(-\mu) = (-1)^{n+m}\bar P_n^m(\mu)`
to halve the work [Hack & Jakob 1992, sec. 5d]: a spectral array has shape ``(2, T+1, L)`` (parity
``p = (n-m) mod 2``, order ``m``, index ``l`` with ``n = m + 2l + p``), padded with zeros where ``n > T``.
:meth:`SphericalHarmonics.index` and :meth:`SphericalHarmonics.to_triangle` translate to ``(n, m)``.

References
----------
Hack, J. J. and Jakob, R. (1992). Description of a global shallow water model based on the spectral transform
method. NCAR Technical Note NCAR/TN-343+STR.
Durran, D. R. (2010). Numerical Methods for Fluid Dynamics, 2nd ed., Springer, chapter 6.4.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module

__all__ = ["SphericalHarmonics", "gaussian_latitudes", "legendre_functions"]

EARTH_RADIUS = 6.37122e6  # m [Williamson et al. 1992, Table I]


def gaussian_latitudes(nlat: int):
    r"""Gauss–Legendre nodes ``mu = sin(lat)`` and weights, ordered north to south (weights sum to 2).

    ``numpy.polynomial.legendre.leggauss`` gives the starting nodes; two Newton steps on :math:`P_{nlat}`
    in extended precision then make the weights :math:`w = 2/((1-\mu^2) P'_{nlat}(\mu)^2)` accurate to a
    few ulp (leggauss's weights are off by ~3e-13 at nlat = 128, which would cap the transform accuracy).
    """
    x = np.polynomial.legendre.leggauss(nlat)[0].astype(np.longdouble)
    for it in range(3):
        p0, p1 = np.ones_like(x), x.copy()
        for k in range(2, nlat + 1):
            p0, p1 = p1, ((2 * k - 1) * x * p1 - (k - 1) * p0) / k
        dp = nlat * (x * p1 - p0) / (x * x - 1)
        if it < 2:
            x = x - p1 / dp
    w = 2 / ((1 - x * x) * dp * dp)
    return np.asarray(x[::-1], dtype=np.float64), np.asarray(w[::-1], dtype=np.float64)


def _eps(n, m):
    r""":math:`\epsilon_n^m = \sqrt{(n^2-m^2)/(4n^2-1)}` [Hack & Jakob 1992, sec. 2a]."""
    n, m = np.asarray(n, float), np.asarray(m, float)
    return np.sqrt(np.maximum(n * n - m * m, 0.0) / (4.0 * n * n - 1.0))


def legendre_functions(T: int, mu):
    r"""Normalised :math:`\bar P_n^m(\mu)` and :math:`H_n^m = (1-\mu^2) d\bar P_n^m/d\mu` for ``n <= T``.

    Parameters
    ----------
    T : int
        Triangular truncation.
    mu : array_like, shape (J,)
        Points in (-1, 1).

    Returns
    -------
    P, H : ndarray, shape (T+1, T+1, J)
        Indexed ``[m, n - m, j]`` (entries with ``n > T`` are zero).

    Notes
    -----
    Sectoral start :math:`\bar P_0^0 = 1/\sqrt2`,
    :math:`\bar P_m^m = \sqrt{(2m+1)/(2m)}\,(1-\mu^2)^{1/2}\bar P_{m-1}^{m-1}`, then the three-term recurrence
    :math:`\mu\bar P_n^m = \epsilon_{n+1}^m\bar P_{n+1}^m + \epsilon_n^m\bar P_{n-1}^m` upward in ``n``,
    which is stable [Hack & Jakob 1992, sec. 2a]. The derivative follows from
    :math:`H_n^m = -n\epsilon_{n+1}^m\bar P_{n+1}^m + (n+1)\epsilon_n^m\bar P_{n-1}^m` (same source).
    No Condon–Shortley phase. Values below 1e-250 (deep in the polar evanescent region) are set to zero.
    """
    mu = np.asarray(mu, float)
    M, J = T + 1, mu.size
    m = np.arange(M, dtype=float)[:, None]
    # Sectoral functions by the running product (underflow to zero near the poles is harmless).
    factor = np.sqrt((2 * m[1:] + 1) / (2 * m[1:])) * np.sqrt(1.0 - mu * mu)[None, :]
    pmm = np.cumprod(np.concatenate([np.full((1, J), 1 / np.sqrt(2.0)), factor]), axis=0)
    P = np.zeros((M, T + 2, J))  # [m, l = n - m, j], one extra degree for H
    P[:, 0] = pmm
    P[:, 1] = np.sqrt(2 * m + 3) * mu[None, :] * pmm
    for l in range(2, T + 2):
        n = m + l
        P[:, l] = (mu[None, :] * P[:, l - 1] - _eps(n - 1, m) * P[:, l - 2]) / _eps(n, m)
    n = m + np.arange(T + 1)[None, :]  # (M, T+1)
    Pm1 = np.concatenate([np.zeros((M, 1, J)), P[:, :T]], axis=1)
    H = -(n * _eps(n + 1, m))[..., None] * P[:, 1:T + 2] + ((n + 1) * _eps(n, m))[..., None] * Pm1
    P = P[:, :T + 1]
    keep = (n <= T)[..., None]
    P, H = np.where(keep, P, 0.0), np.where(keep, H, 0.0)
    P[np.abs(P) < 1e-250] = 0.0
    H[np.abs(H) < 1e-250] = 0.0
    return P, H


class SphericalHarmonics:
    """Grid <-> spectral transforms for scalars and for vorticity/divergence <-> winds.

    Parameters
    ----------
    nlon, nlat : int
        Gaussian grid size: ``nlon`` even, ``nlat`` even.
    truncation : int, optional
        Triangular truncation T; default the largest alias-free one, ``(nlon - 1) // 3`` on the usual
        ``nlon = 2 nlat`` grids (T42 on 128x64, T85 on 256x128, T170 on 512x256). Requires
        ``nlon >= 3T+1`` and ``2*nlat >= 3T+1``.
    radius : float
        Sphere radius in m (enters the vector transforms).
    xp : module
        numpy or cupy; tables are built on the host in float64 and moved once.

    Attributes
    ----------
    lat, lon : ndarray
        Latitudes (north to south) and longitudes in degrees (host arrays).
    mu, weights : ndarray
        Gaussian nodes ``sin(lat)`` and weights (host arrays).
    n, m : xp.ndarray, shape (2, T+1, L)
        Degree and order of each spectral slot; ``valid`` marks ``n <= T``.
    """

    def __init__(self, nlon: int, nlat: int, truncation: int | None = None, radius: float = EARTH_RADIUS,
                 xp=np):
        for name, v in (("nlon", nlon), ("nlat", nlat)):
            if not isinstance(v, (int, np.integer)) or v < 8:
                raise ValueError(f"{name}: expected an integer >= 8, got {v!r}")
        if nlon % 2:
            raise ValueError(f"nlon: must be even for the real FFT, got {nlon}")
        if nlat % 2:
            raise ValueError(f"nlat: must be even (symmetric Gaussian grid), got {nlat}")
        T = min((nlon - 1) // 3, (2 * nlat - 1) // 3) if truncation is None else truncation
        if not isinstance(T, (int, np.integer)) or T < 1:
            raise ValueError(f"truncation: expected a positive integer, got {truncation!r}")
        if nlon < 3 * T + 1 or 2 * nlat < 3 * T + 1:
            raise ValueError(f"truncation: T{T} is too high for a {nlon}x{nlat} grid (alias-free needs "
                             f"nlon >= 3T+1 = {3 * T + 1} and nlat >= (3T+1)/2 = {(3 * T + 2) // 2}); "
                             f"use truncation <= {min((nlon - 1) // 3, (2 * nlat - 1) // 3)}")
        self.nlon, self.nlat, self.T, self.radius, self.xp = int(nlon), int(nlat), int(T), float(radius), xp
        self.mu, self.weights = gaussian_latitudes(nlat)
        self.lat = np.degrees(np.arcsin(self.mu))
        self.lon = 360.0 * np.arange(nlon) / nlon
        J, M, self.L = nlat // 2, T + 1, T // 2 + 1
        P, H = legendre_functions(T, self.mu[:J])
        # Parity blocks: l = n - m = 2*k + p. Padded to L with zeros.
        Pb, Hb = np.zeros((2, M, self.L, J)), np.zeros((2, M, self.L, J))
        for p in (0, 1):
            cnt = P[:, p::2].shape[1]
            Pb[p, :, :cnt], Hb[p, :, :cnt] = P[:, p::2], H[:, p::2]
        # Blocks of consecutive m share one padded length: the valid l-range shrinks as m grows, so
        # blocking skips most of the zero padding (about 40 % of the flops at T85).
        nblocks = max(1, min(8, M // 12))
        edges = np.linspace(0, M, nblocks + 1).round().astype(int)
        w = self.weights[:J] / nlon  # the 1/nlon of the forward FFT is folded into the quadrature
        self._blocks = []
        for a, b in zip(edges[:-1], edges[1:]):
            Lb = (T - a) // 2 + 1
            P_, H_ = Pb[:, a:b, :Lb], Hb[:, a:b, :Lb]
            self._blocks.append((a, b, Lb, *(xp.asarray(np.ascontiguousarray(A)) for A in (
                P_ * w, H_ * w, P_.transpose(0, 1, 3, 2), H_.transpose(0, 1, 3, 2)))))
        mm = np.broadcast_to(np.arange(M)[None, :, None], (2, M, self.L))
        nn = mm + 2 * np.arange(self.L)[None, None, :] + np.arange(2)[:, None, None]
        self._n_host, self._m_host, self._valid_host = nn, mm, nn <= T
        self.n, self.m, self.valid = xp.asarray(nn), xp.asarray(mm), xp.asarray(nn <= T)
        lap = np.where(nn <= T, -nn * (nn + 1.0) / self.radius ** 2, 0.0)
        self.laplacian_eigenvalues = xp.asarray(lap)
        self.inverse_laplacian = xp.asarray(np.where(lap != 0, 1.0 / np.where(lap != 0, lap, 1.0), 0.0))
        self._im = xp.asarray(1j * mm)  # d/dlambda
        self._rcos = xp.asarray(1.0 / (self.radius * np.sqrt(1.0 - self.mu ** 2)))[:, None]  # 1/(a cos)
        if xp is np:
            import scipy.fft
            self._fft = scipy.fft
        else:
            self._fft = xp.fft

    # ----------------------------------------------------------------- layout helpers
    @property
    def spectral_shape(self) -> tuple:
        """Shape of one spectral field: ``(2, T+1, L)``."""
        return (2, self.T + 1, self.L)

    def index(self, n: int, m: int) -> tuple:
        """Index of the coefficient :math:`f_n^m` (``0 <= m <= n <= T``) in a spectral array."""
        if not 0 <= m <= n <= self.T:
            raise ValueError(f"(n, m): expected 0 <= m <= n <= {self.T}, got ({n}, {m})")
        return ((n - m) % 2, m, (n - m) // 2)

    def to_triangle(self, spec):
        """Spectral array ``(..., 2, T+1, L)`` -> dense ``(..., T+1 [m], T+1 [n])`` (zero where n < m)."""
        xp = get_array_module(spec)
        out = xp.zeros(spec.shape[:-3] + (self.T + 1, self.T + 1), spec.dtype)
        p, m, l = np.nonzero(self._valid_host)
        out[..., xp.asarray(m), xp.asarray(self._n_host[p, m, l])] = spec[..., xp.asarray(p), xp.asarray(m),
                                                                        xp.asarray(l)]
        return out

    # ----------------------------------------------------------------- Legendre + FFT kernels
    def _fourier(self, grids):
        """Grids ``(k, nlat, nlon)`` -> real ``(2, M, J, 2k)``: [symmetric, antisymmetric] Fourier halves."""
        xp, J, M = self.xp, self.nlat // 2, self.T + 1
        F = self._fft.rfft(grids, axis=-1)[..., :M]
        north, south = F[:, :J], F[:, ::-1][:, :J]  # south[:, j] is the row at -mu_j
        S = xp.stack([north + south, north - south])  # (2, k, J, M)
        S = xp.ascontiguousarray(S.transpose(0, 3, 2, 1))  # (2, M, J, k)
        return S.view(xp.float64)

    def _grids(self, north, south):
        """Fourier halves ``(M, J, k)`` complex (north, mirrored south) -> grids ``(k, nlat, nlon)``."""
        xp, J, M = self.xp, self.nlat // 2, self.T + 1
        k = north.shape[-1]
        F = xp.zeros((k, self.nlat, self.nlon // 2 + 1), dtype=xp.complex128)
        F[:, :J, :M] = north.transpose(2, 1, 0)
        F[:, J:, :M] = south.transpose(2, 1, 0)[:, ::-1]
        return self._fft.irfft(F, n=self.nlon, axis=-1) * self.nlon

    def _analyse(self, S, which: str):
        """Quadrature ``(2, M, J, 2k)`` -> spectral ``(2, M, L, k)``; ``which`` is ``"P"`` or ``"H"``."""
        xp = self.xp
        X = S if which == "P" else S[::-1]  # H_n^m has the opposite parity in mu to P_n^m
        out = xp.zeros(X.shape[:2] + (self.L, X.shape[-1]))
        for a, b, Lb, Pa, Ha, _, _ in self._blocks:
            out[:, a:b, :Lb] = xp.matmul(Pa if which == "P" else Ha, X[:, a:b])
        return out.view(xp.complex128)

    def _synthesise(self, spec, which: str):
        """Spectral ``(2, M, L, k)`` -> Fourier halves (north, south) each ``(M, J, k)`` complex."""
        xp = self.xp
        X = xp.ascontiguousarray(spec).view(xp.float64)
        out = xp.empty((2, self.T + 1, self.nlat // 2, X.shape[-1]))
        for a, b, Lb, _, _, Ps, Hs in self._blocks:
            out[:, a:b] = xp.matmul(Ps if which == "P" else Hs, X[:, a:b, :Lb])
        out = out.view(xp.complex128)
        if which == "P":
            return out[0] + out[1], out[0] - out[1]
        return out[0] + out[1], out[1] - out[0]

    # ----------------------------------------------------------------- public transforms
    def _as_stack(self, grid):
        xp = self.xp
        g = xp.asarray(grid, dtype=xp.float64)
        if g.shape[-2:] != (self.nlat, self.nlon):
            raise ValueError(f"grid: expected shape (..., {self.nlat}, {self.nlon}), got {g.shape}")
        return g.reshape((-1, self.nlat, self.nlon)), g.shape[:-2]

    def grid_to_spec(self, grid):
        """Analysis: grid ``(..., nlat, nlon)`` -> spectral ``(..., 2, T+1, L)`` complex128."""
        g, lead = self._as_stack(grid)
        spec = self._analyse(self._fourier(g), "P")
        return self.xp.moveaxis(spec, -1, 0).reshape(lead + self.spectral_shape)

    def spec_to_grid(self, spec):
        """Synthesis: spectral ``(..., 2, T+1, L)`` -> grid ``(..., nlat, nlon)`` float64."""
        xp = self.xp
        s = xp.asarray(spec, dtype=xp.complex128)
        lead = s.shape[:-3]
        s = xp.moveaxis(s.reshape((-1,) + self.spectral_shape), 0, -1)
        north, south = self._synthesise(s, "P")
        return self._grids(north, south).reshape(lead + (self.nlat, self.nlon))

    def vrtdiv(self, u, v):
        r"""Vorticity and divergence spectra of the wind ``(u, v)`` (grids in m/s).

        Uses :math:`\zeta_n^m = \sum_j \frac{w_j}{a\cos\varphi_j}[im\,v_m\bar P_n^m + u_m H_n^m]` and
        :math:`\delta_n^m = \sum_j \frac{w_j}{a\cos\varphi_j}[im\,u_m\bar P_n^m - v_m H_n^m]`, the
        quadrature form of the curl and divergence after integrating the :math:`\mu`-derivative by parts
        [Hack & Jakob 1992, sec. 5a].
        """
        xp = self.xp
        g, lead = self._as_stack(xp.stack([xp.asarray(u), xp.asarray(v)]))
        S = self._fourier(g * self._rcos)
        sP, sH = self._analyse(S, "P"), self._analyse(S, "H")
        vrt = self._im * sP[..., 1] + sH[..., 0]
        div = self._im * sP[..., 0] - sH[..., 1]
        return vrt, div

    def uv(self, vrt, div):
        r"""Winds ``(u, v)`` on the grid from vorticity and divergence spectra.

        With streamfunction :math:`\psi = \nabla^{-2}\zeta` and velocity potential :math:`\chi = \nabla^{-2}\delta`,
        :math:`u\cos\varphi = \frac1a[\partial_\lambda\chi - (1-\mu^2)\partial_\mu\psi]`,
        :math:`v\cos\varphi = \frac1a[\partial_\lambda\psi + (1-\mu^2)\partial_\mu\chi]`
        [Hack & Jakob 1992, sec. 2b].
        """
        xp = self.xp
        psi = xp.asarray(vrt) * self.inverse_laplacian
        chi = xp.asarray(div) * self.inverse_laplacian
        u, v = self.uv_from_potentials(psi, chi)
        return u, v

    def uv_from_potentials(self, psi, chi):
        """Winds from streamfunction and velocity-potential spectra (see :meth:`uv`)."""
        xp = self.xp
        nP, sP = self._synthesise(xp.stack([self._im * chi, self._im * psi], axis=-1), "P")
        nH, sH = self._synthesise(xp.stack([psi, chi], axis=-1), "H")
        north = xp.stack([nP[..., 0] - nH[..., 0], nP[..., 1] + nH[..., 1]], axis=-1)
        south = xp.stack([sP[..., 0] - sH[..., 0], sP[..., 1] + sH[..., 1]], axis=-1)
        g = self._grids(north, south) * self._rcos
        return g[0], g[1]

    def gradient(self, spec):
        """Gradient ``(d/dx, d/dy)`` on the grid of a scalar spectrum (the winds of potential ``spec``)."""
        return self.uv_from_potentials(self.xp.zeros_like(spec), self.xp.asarray(spec))

    def laplacian(self, spec):
        """Spectral Laplacian: multiplies :math:`f_n^m` by :math:`-n(n+1)/a^2`."""
        return self.xp.asarray(spec) * self.laplacian_eigenvalues

    def integrate(self, grid) -> float:
        """Area integral over the sphere (m^2 times the field's unit) by Gaussian quadrature."""
        xp = self.xp
        w = xp.asarray(self.weights)
        return float(self.radius ** 2 * (2 * np.pi / self.nlon) * (xp.asarray(grid).sum(axis=-1) * w).sum(-1))
