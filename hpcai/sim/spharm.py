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

Storage and speed. The Legendre sums dominate the cost. They use the equatorial symmetry
:math:`\bar P_n^m(-\mu) = (-1)^{n+m}\bar P_n^m(\mu)` to halve the work [Hack & Jakob 1992, sec. 5d]: a
spectral array has shape ``(2, T+1, L)`` (parity ``p = (n-m) mod 2``, order ``m``, index ``l`` with
``n = m + 2l + p``), padded with zeros where ``n > T``. :meth:`SphericalHarmonics.index` and
:meth:`SphericalHarmonics.to_triangle` translate to ``(n, m)``. The derivative functions :math:`H_n^m` are
combinations of :math:`\bar P_{n\pm1}^m`, so the vector transforms are P-sums one degree higher.

On the host with numba installed (:mod:`hpcai.accel`) the sums are compiled loops that compute the functions
by their recurrence as they go, orders spread over threads (:mod:`hpcai.sim.spharm_compiled`): no table is
read, so they run from cache, and with ``threads`` (default: ``scipy.fft``'s ``workers``) they and the FFTs
use several cores. Otherwise (cupy, ``HPCAI_NUMBA=0``, :func:`hpcai.accel.disabled`) two numpy paths, which
are the reference, do them as batched matrix products with the real and imaginary parts of every field as
columns, chosen per call by the number of fields:

- the *table* path (several fields, e.g. the 4 and 5 fields of a shallow-water step in one pass): one small
  GEMM per (parity, m) over a precomputed table of :math:`\bar P_n^m` (degree up to T+1; 2 MB at T85, 15 MB
  at T170);
- the *factored* path (one scalar or one wind field, on the host), where reading that table from memory for
  little arithmetic would set the speed: orders are grouped in blocks whose functions are exact combinations
  of two *base* orders' functions (:meth:`SphericalHarmonics._build_tables`), so a block costs one GEMM of the
  bases with all its orders' columns and one small GEMM per order with its coefficients -- about 55 % of the
  table's bytes (8.6 of 15 MB at T170) for 1.5x its arithmetic.

References
----------
Hack, J. J. and Jakob, R. (1992). Description of a global shallow water model based on the spectral transform
method. NCAR Technical Note NCAR/TN-343+STR.
Durran, D. R. (2010). Numerical Methods for Fluid Dynamics, 2nd ed., Springer, chapter 6.4.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import checks
from ..backend import get_array_module
from . import spharm_compiled
from .spharm_compiled import recurrence

__all__ = ["SphericalHarmonics", "gaussian_latitudes", "legendre_functions"]

_BLOCK = 16  # orders per block of the factored Legendre path (even)
# grid points (fields x nlat x nlon) from which the compiled path's Legendre sums and FFTs use several threads:
# one T170 field or four T85 fields. Below, on 2 cores, a second thread saved at most 0.05 ms and, with other
# processes on the cores, often cost more (waiting for a descheduled helper).
_PARALLEL = 1 << 17


class _Block(NamedTuple):
    """Orders ``[a, a + 2 ni)`` of the factored path (see ``SphericalHarmonics._build_tables``)."""
    a: int
    ni: int
    Lb: int    # rows of the base order a up to degree T
    Lb1: int   # ... up to degree T+1
    j0: int    # first latitude kept
    B: object  # (2, 2, Lb1, J - j0) bases [p, c, l, j]
    Bw: object  # the same times the quadrature weights (and the FFT's 1/nlon)
    C: object  # (2, 2, ni - 1, Lb1 - 1, Lb1) coefficients [p, c, i - 1, l, l'] of the orders in the bases


class _Rfft(NamedTuple):
    """Fourier data of the compiled path: the rfft ``(k, nlat, nlon // 2 + 1)`` and the factor of each northern
    row and its mirror (quadrature weight, 1/nlon, and the caller's row factor)."""
    coefficients: np.ndarray
    weights: np.ndarray


class _Coefficients(NamedTuple):
    """What the compiled path's synthesis hands to ``_grids``: real P-coefficients ``(2, M, L or L1, 2k)``
    and the highest degree to sum."""
    coefficients: np.ndarray
    degree: int


EARTH_RADIUS = 6.37122e6  # m [Williamson et al. 1992, Table I]


def _real_view(z):
    """Complex ``(..., k)`` -> real ``(..., 2k)`` view, copying only if the last axis is not contiguous."""
    xp = get_array_module(z)
    if z.strides[-1] != z.itemsize or (xp is not np and not z.flags.c_contiguous):  # cupy wants C order
        z = xp.ascontiguousarray(z)
    return z.view(z.real.dtype)


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
    threads : int or None
        Threads of the compiled Legendre sums and their FFTs; None (the default) follows ``scipy.fft``'s
        ``workers`` setting (1 unless changed with ``scipy.fft.set_workers``).
    factored_columns : int
        Without the compiled path, calls with up to this many real columns (2 per scalar field, 4 per wind
        field) take the factored Legendre path, others the table path (see the module notes): 4 with numpy,
        0 with cupy.
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
        self.L1 = (T + 1) // 2 + 1  # slots up to degree T+1, which the vector transforms need
        P = legendre_functions(T + 1, self.mu[:J])[0]
        self._build_tables(P[:M])
        self._recurrence = recurrence(T, self.mu[:J], P, _eps) if xp is np else None
        self._ones = np.ones(J)
        self._w = xp.asarray(self.weights[:J] / nlon)[:, None]  # the 1/nlon of the forward FFT folded in
        # real columns (2 per field) up to which the factored path is taken: one scalar or one wind field, on
        # the host (a GPU's bandwidth makes the table path the faster one there)
        self.factored_columns = 4 if xp is np else 0
        self.threads = None
        mm = np.broadcast_to(np.arange(M)[None, :, None], (2, M, self.L))
        nn = mm + 2 * np.arange(self.L)[None, None, :] + np.arange(2)[:, None, None]
        self._n_host, self._m_host, self._valid_host = nn, mm, nn <= T
        self._wide_cache = {}
        self._valid_f = xp.asarray((nn <= T)[..., None].astype(np.float64))
        # H_n^m = A_n P_{n+1}^m + B_n P_{n-1}^m turns H-sums into P-sums one degree higher [Hack & Jakob 1992,
        # sec. 2a], so the vector transforms reuse the P table.
        self._A = xp.asarray(np.where(nn <= T, -nn * _eps(nn + 1, mm), 0.0)[..., None])
        self._B = xp.asarray(np.where(nn <= T, (nn + 1) * _eps(nn, mm), 0.0)[..., None])
        self.n, self.m, self.valid = xp.asarray(nn), xp.asarray(mm), xp.asarray(nn <= T)
        lap = np.where(nn <= T, -nn * (nn + 1.0) / self.radius ** 2, 0.0)
        self.laplacian_eigenvalues = xp.asarray(lap)
        self.inverse_laplacian = xp.asarray(np.where(lap != 0, 1.0 / np.where(lap != 0, lap, 1.0), 0.0))
        self._im = xp.asarray(1j * mm * (nn <= T))  # d/dlambda (zero where n > T)
        self._m_valid = np.ascontiguousarray(mm * (nn <= T), dtype=np.float64)
        self._rcos = xp.asarray(1.0 / (self.radius * np.sqrt(1.0 - self.mu ** 2)))[:, None]  # 1/(a cos)
        self._rcos_half = self._rcos[:J, 0]
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
    # Three paths: the compiled recurrence on the host where numba may run; otherwise, chosen per call by the
    # number of real columns (2 per field), the table path (one GEMM per order and parity over the full table)
    # for many fields and the factored path (bases and coefficients: ~55 % of the bytes, 1.5x the arithmetic)
    # for a few. Their Fourier layouts differ and tell them apart: recurrence :class:`_Rfft` (the FFT's own
    # array) and :class:`_Coefficients` (synthesis deferred to _grids), table ``(2, M, J, 2k)``, factored
    # ``(2, J, 2, Me, 2k)``.
    @property
    def threads(self) -> int | None:
        """Threads of the compiled Legendre sums and their FFTs; None follows ``scipy.fft``'s workers."""
        return self._thread_count

    @threads.setter
    def threads(self, value) -> None:
        self._thread_count = None if value is None else checks.integer("threads", value, low=1)

    def _compiled(self) -> bool:
        """Whether the Legendre sums take the compiled recurrence (host arrays, numba available)."""
        return self._recurrence is not None and spharm_compiled.available()

    def _threads(self, fields: int) -> int:
        """Threads for the compiled Legendre sums and FFTs of ``fields`` grids (see ``threads``); one for small
        work (``_PARALLEL``)."""
        threads = self.threads if self.threads is not None else self._fft.get_workers()
        return threads if fields * self.nlat * self.nlon >= _PARALLEL else 1

    def _factored(self, columns: int) -> bool:
        """Whether Legendre sums over ``columns`` real columns take the factored path."""
        return columns <= self.factored_columns

    def _fourier(self, grids, rows=None):
        """Grids ``(k, nlat, nlon)`` (or a sequence of k grids) -> Fourier halves for :meth:`_analyse`, times
        ``rows`` (J,), a factor symmetric about the equator, if given, and the quadrature weights (which the
        factored path's bases carry instead)."""
        if self._compiled():
            w = self._w[:, 0] if rows is None else self._w[:, 0] * rows
            grids = np.asarray(grids)
            return _Rfft(self._fft.rfft(grids, axis=-1, workers=self._threads(len(grids))), w)
        if self._factored(2 * len(grids)):
            return self._fourier_factored(grids, rows)
        return self._fourier_table(grids, rows)

    def _analyse(self, S, degree: int | None = None):
        """Fourier halves -> P-sums ``(2, M, L, k)`` complex for ``n <= T``, or ``(2, M, L1, k)`` for
        ``n <= T+1`` with ``degree=T+1`` (what :meth:`_h_sums` needs)."""
        extra = degree is not None and degree > self.T
        if isinstance(S, _Rfft):
            r, k = self._recurrence, S.coefficients.shape[0]
            out = np.zeros((2, self.T + 1, self.L1 if extra else self.L, 2 * k))
            args = (S.coefficients, S.weights, r.mu, r.start, r.first, r.R, r.Q, self.T + extra, out)
            spharm_compiled.run(spharm_compiled.legendre_analysis, args, self.T + 1, self._threads(k))
            return out.view(np.complex128)
        out = self._analyse_factored(S, extra) if S.ndim == 5 else self._analyse_table(S, extra)
        if not extra:
            out *= self._wide(out.shape[-1])[2]  # the tables hold degree T+1 too: those are not coefficients
        return out.view(self.xp.complex128)

    def _synthesise(self, spec):
        """Spectral ``(2, M, L or L1, k)`` (P-coefficients) -> Fourier halves for :meth:`_grids`."""
        X = self.xp.ascontiguousarray(spec).view(self.xp.float64)
        if self._compiled():  # the sums are run by _grids, which knows the row factor
            return _Coefficients(X, self.T + 1 if X.shape[2] == self.L1 else self.T)  # as far as the table reads
        return self._synthesise_factored(X) if self._factored(X.shape[-1]) else self._synthesise_table(X)

    def _grids(self, halves, rows=None):
        """Fourier halves -> grids ``(k, nlat, nlon)``; ``rows`` (J,), symmetric about the equator, multiplies
        the rows (the halves are overwritten)."""
        if isinstance(halves, _Coefficients):
            r, M, X = self._recurrence, self.T + 1, halves.coefficients
            F = np.empty((X.shape[-1] // 2, self.nlat, self.nlon // 2 + 1), dtype=np.complex128)
            F[:, :, M:] = 0.0
            w = self._ones if rows is None else rows
            args = (X, w, r.mu, r.start, r.first, r.R, r.Q, halves.degree, F)
            kernel = spharm_compiled.legendre_synthesis if len(F) > 1 else spharm_compiled.legendre_synthesis_each
            spharm_compiled.run(kernel, args, M, self._threads(len(F)))
            return self._fft.irfft(F, n=self.nlon, axis=-1, norm="forward", workers=self._threads(len(F)))
        if halves.ndim == 5:
            return self._grids_factored(halves, rows)
        return self._grids_table(halves, rows)

    # table path
    def _fourier_table(self, grids, rows):
        """-> real ``(2, M, J, 2k)``: [symmetric, antisymmetric] Fourier halves (``[..., 2i:2i+2]`` are the
        real and imaginary parts of field ``i``). One field at a time, so the FFT output is combined while it
        is still in cache."""
        xp, J, M, k = self.xp, self.nlat // 2, self.T + 1, len(grids)
        S = xp.empty((2, M, J, k), dtype=xp.complex128)
        for i in range(k):
            F = self._fft.rfft(grids[i], axis=-1)
            north, south = F[:J, :M].T, F[:J - 1:-1, :M].T  # south[:, j] is the row at -mu_j
            xp.add(north, south, out=S[0, :, :, i])
            xp.subtract(north, south, out=S[1, :, :, i])
        S *= self._w if rows is None else self._w * rows[:, None]
        return S.view(xp.float64)

    def _grids_table(self, halves, rows):
        """[symmetric, antisymmetric] halves ``(2, M, J, k)`` complex -> grids ``(k, nlat, nlon)``."""
        xp, J, M = self.xp, self.nlat // 2, self.T + 1
        k = halves.shape[-1]
        if rows is not None:
            halves *= rows[:, None]
        F = xp.zeros((k, self.nlat, self.nlon // 2 + 1), dtype=xp.complex128)
        for i in range(k):
            xp.add(halves[0, :, :, i], halves[1, :, :, i], out=F[i, :J, :M].T)
            xp.subtract(halves[0, :, :, i], halves[1, :, :, i], out=F[i, :J - 1:-1, :M].T)
        return self._fft.irfft(F, n=self.nlon, axis=-1, norm="forward")

    def _analyse_table(self, S, extra):
        """``(2, M, J, 2k)`` -> real ``(2, M, L or L1, 2k)``: one GEMM per (parity, m)."""
        xp = self.xp
        out = xp.zeros(S.shape[:2] + (self.L1 if extra else self.L, S.shape[-1]))
        for a, b, Lb, Lb1, j0, P in self._table:
            n = Lb1 if extra else Lb
            out[:, a:b, :n] = xp.matmul(P[:, :, :n], S[:, a:b, j0:])
        return out

    def _synthesise_table(self, X):
        """Real ``(2, M, L or L1, 2k)`` -> halves ``(2, M, J, k)`` complex."""
        xp = self.xp
        Lx = X.shape[2]
        out = xp.empty((2, self.T + 1, self.nlat // 2, X.shape[-1]))
        for a, b, Lb, Lb1, j0, P in self._table:
            n = min(Lb1, Lx)
            out[:, a:b, j0:] = xp.matmul(P[:, :, :n].transpose(0, 1, 3, 2), X[:, a:b, :n])
            out[:, a:b, :j0] = 0.0
        return out.view(xp.complex128)

    # factored path
    def _fourier_factored(self, grids, rows):
        """-> real ``(2, J, 2, Me, 2k)``: [symmetric, antisymmetric] part ``p``, order ``m = 2q + h`` at
        ``[p, j, h, q]`` (even orders first, so that the orders sharing a base are adjacent columns), field
        ``i`` at ``[..., 2i:2i+2]``. The quadrature weights are in the bases (:meth:`_build_tables`)."""
        xp, J, Me, k = self.xp, self.nlat // 2, self._Me, len(grids)
        X = xp.empty((2, J, 2, Me, k), dtype=xp.complex128)
        for i in range(k):
            F = self._fft.rfft(grids[i], axis=-1)
            north = F[:J, :2 * Me].reshape(J, Me, 2).transpose(0, 2, 1)
            south = F[:J - 1:-1, :2 * Me].reshape(J, Me, 2).transpose(0, 2, 1)  # south[j] is the row at -mu_j
            xp.add(north, south, out=X[0, :, :, :, i])
            xp.subtract(north, south, out=X[1, :, :, :, i])
        if rows is not None:
            X *= rows[:, None, None, None]
        return X.view(xp.float64).reshape(2, J, 2, Me, 2 * k)

    def _grids_factored(self, halves, rows):
        """Real ``(2, J, 2, Me, 2k)`` (the layout of :meth:`_fourier_factored`) -> grids ``(k, nlat, nlon)``."""
        xp, J, Me = self.xp, self.nlat // 2, self._Me
        X = halves.view(xp.complex128)
        k = X.shape[-1]
        if rows is not None:
            X *= rows[:, None, None, None]
        F = xp.empty((k, self.nlat, self.nlon // 2 + 1), dtype=xp.complex128)
        F[:, :, 2 * Me:] = 0.0  # (order 2 Me - 1 is padding, zero, when T is even)
        for i in range(k):
            even, odd = X[0, :, :, :, i], X[1, :, :, :, i]
            xp.add(even, odd, out=F[i, :J, :2 * Me].reshape(J, Me, 2).transpose(0, 2, 1))
            xp.subtract(even, odd, out=F[i, :J - 1:-1, :2 * Me].reshape(J, Me, 2).transpose(0, 2, 1))
        return self._fft.irfft(F, n=self.nlon, axis=-1, norm="forward")

    def _analyse_factored(self, S, extra):
        """``(2, J, 2, Me, 2k)`` -> real ``(2, M, L or L1, 2k)``: per block, one GEMM of the bases with all
        its orders' columns, then one GEMM per order with its coefficients."""
        xp, M, Me = self.xp, self.T + 1, self._Me
        J, kk = S.shape[1], S.shape[-1]
        Lout = self.L1 if extra else self.L
        out = xp.zeros((2, 2 * Me, Lout, kk))
        X4 = S.reshape(2, J, 2, Me * kk)
        for b in self._blocks:
            a, ni = b.a, b.ni
            n = b.Lb1 if extra else b.Lb  # rows of the base order a
            Xb = X4[:, b.j0:, :, a // 2 * kk:(a // 2 + ni) * kk].transpose(0, 2, 1, 3)  # (p, c, j, (i, col))
            ob = out[:, a:a + 2 * ni].reshape(2, ni, 2, Lout, kk).transpose(0, 2, 1, 3, 4)  # (p, c, i, l, col)
            Y = xp.matmul(b.Bw[:, :, :n], Xb).reshape(2, 2, n, ni, kk)  # sums of the base functions
            ob[:, :, 0, :n] = Y[:, :, :, 0]
            if ni > 1:
                xp.matmul(b.C[:, :, :, :n - 1, :n], Y[:, :, :, 1:].transpose(0, 1, 3, 2, 4), out=ob[:, :, 1:, :n - 1])
        return out[:, :M]

    def _synthesise_factored(self, X):
        """Real ``(2, M, L or L1, 2k)`` -> real ``(2, J, 2, Me, 2k)`` for :meth:`_grids_factored`: per block,
        one GEMM per order with its coefficients (giving coefficients of the bases), then one GEMM of the
        bases with all its orders' columns."""
        xp, Me, J = self.xp, self._Me, self.nlat // 2
        Lx, kk = X.shape[2], X.shape[-1]
        out = xp.empty((2, J, 2, Me, kk))
        out4 = out.reshape(2, J, 2, Me * kk)
        for b in self._blocks:
            a, ni = b.a, b.ni
            n = min(b.Lb1, Lx)
            cb = X[:, a:a + 2 * ni]
            if cb.shape[1] < 2 * ni:  # the last block when T is even: order T + 1 is zero padding
                cb = xp.concatenate([cb, xp.zeros((2, 1, Lx, kk))], axis=1)
            cb = cb.reshape(2, ni, 2, Lx, kk).transpose(0, 2, 1, 3, 4)  # (p, c, i, l, col)
            cols = slice(a // 2 * kk, (a // 2 + ni) * kk)
            out4[:, :b.j0, :, cols] = 0.0
            Z = xp.empty((2, 2, n, ni, kk))  # coefficients of the base functions
            Z[:, :, :, 0] = cb[:, :, 0, :n]
            if ni > 1:
                nr = min(n, b.Lb1 - 1)
                xp.matmul(b.C[:, :, :, :nr, :n].transpose(0, 1, 2, 4, 3), cb[:, :, 1:, :nr],
                          out=Z[:, :, :, 1:].transpose(0, 1, 3, 2, 4))
            xp.matmul(b.B[:, :, :n].transpose(0, 1, 3, 2), Z.reshape(2, 2, n, ni * kk),
                      out=out4[:, b.j0:, :, cols].transpose(0, 2, 1, 3))
        return out

    def _build_tables(self, P):
        r"""The Legendre tables of both paths from ``P[m, n - m, j]`` (degree up to T+1, northern latitudes).

        Table path: :math:`\bar P_n^m` in parity blocks ``[p, m, l, j]`` (``n = m + p + 2l``), in blocks of
        consecutive orders that share one padded length (the valid l-range shrinks as m grows) and one first
        latitude: rows nearer the pole where every function of the block is below 1e-30 (the polar evanescent
        region, up to 40 % of the rows at high m) are left out. One table serves analysis and synthesis (the
        quadrature weights go on the Fourier data), so it can stay in cache.

        Factored path: orders in blocks ``[a, a + 2 ni)`` (``a`` even); order ``m = a + c + 2i`` has the *base*
        ``a + c``. :math:`\bar P_n^m` and :math:`\bar P_{n'}^{a+c}` are both :math:`(1-\mu^2)^{(a+c)/2}` times
        polynomials (of degrees ``n - a - c`` and ``n' - a - c``), so
        :math:`\bar P_n^m = \sum_{n' \le n} C_{nn'} \bar P_{n'}^{a+c}` with
        :math:`C_{nn'} = \int_{-1}^1 \bar P_n^m \bar P_{n'}^{a+c} d\mu` (``|C| <= 1``, zero for ``n' > n``), which
        the grid's Gaussian quadrature gives exactly (the integrand is a polynomial of degree ``n + n' <= 2T+2``).
        A block stores its bases ``B[p, c, l, j]`` (and ``Bw``, times the quadrature weights, for analysis) and
        ``C[p, c, i - 1, l, l']``: about 55 % of the table's bytes, for 1.5x its arithmetic.
        """
        xp, T, J = self.xp, self.T, self.nlat // 2
        M, Me = T + 1, (T + 2) // 2
        self._Me = Me
        Pb = np.zeros((2, 2 * Me, self.L1, J))  # parity blocks: l = n - m = 2*k + p, padded with zeros
        for p in (0, 1):
            cnt = P[:, p::2].shape[1]
            Pb[p, :M, :cnt] = P[:, p::2]

        def first_row(block):  # first latitude where some function of the block is above 1e-30
            big = np.abs(block).max(axis=tuple(range(block.ndim - 1))) > 1e-30
            return int(np.argmax(big)) if big.any() else J

        nblocks = max(1, min(16, M // 10))
        edges = np.linspace(0, M, nblocks + 1).round().astype(int)
        self._table = []
        for a, b in zip(edges[:-1], edges[1:]):
            Lb, Lb1 = (T - a) // 2 + 1, (T + 1 - a) // 2 + 1
            j0 = first_row(Pb[:, a:b, :Lb1])
            self._table.append((a, b, Lb, Lb1, j0, xp.asarray(np.ascontiguousarray(Pb[:, a:b, :Lb1, j0:]))))
        w = self.weights[:J]
        self._blocks = []
        for a in range(0, M, _BLOCK):
            ni = (min(M, a + _BLOCK) - a + 1) // 2
            Lb, Lb1 = (T - a) // 2 + 1, (T + 1 - a) // 2 + 1
            D = Pb[:, a:a + 2 * ni, :Lb1].reshape(2, ni, 2, Lb1, J).transpose(0, 2, 1, 3, 4)  # (p, c, i, l, j)
            j0 = first_row(D)
            C = np.einsum("pcilj,pckj->pcilk", D[:, :, 1:, :Lb1 - 1] * (2 * w), D[:, :, 0])  # even integrands
            i, l, k = np.ogrid[1:ni, :Lb1 - 1, :Lb1]
            C[:, :, k > l + i] = 0.0  # n' > n: zero by orthogonality
            B = D[:, :, 0, :, j0:]
            self._blocks.append(_Block(a, ni, Lb, Lb1, j0, xp.asarray(np.ascontiguousarray(B)),
                                       xp.asarray(B * (w[j0:] / self.nlon)), xp.asarray(C)))

    def _wide(self, width: int):
        """``(A, B, valid)`` broadcast to ``(2, M, L, width)`` and contiguous (so the elementwise loops run long)."""
        if width not in self._wide_cache:
            xp = self.xp
            self._wide_cache[width] = tuple(xp.ascontiguousarray(xp.broadcast_to(a, a.shape[:3] + (width,)))
                                            for a in (self._A, self._B, self._valid_f))
        return self._wide_cache[width]

    def _h_sums(self, Q):
        """P-sums ``(2, M, L1, k)`` up to degree T+1 -> H-sums ``(2, M, L, k)`` (``sum_j w_j g_j H_n^m(mu_j)``):
        ``n - m`` even takes ``Q`` at ``n +- 1`` from the odd slots and vice versa."""
        xp, L = self.xp, self.L
        Qr = _real_view(Q)
        out = xp.empty(Q.shape[:2] + (L, Qr.shape[-1]))
        if self._compiled():
            spharm_compiled.h_sums(Qr, self._A[..., 0], self._B[..., 0], out)
            return out.view(xp.complex128)
        A, B, _ = self._wide(Qr.shape[-1])
        tmp = xp.empty(out.shape[1:])
        xp.multiply(A[0], Qr[1, :, :L], out=out[0])
        xp.multiply(B[0, :, 1:], Qr[1, :, :L - 1], out=tmp[:, 1:])
        out[0, :, 1:] += tmp[:, 1:]
        top = min(L, Qr.shape[2] - 1)
        xp.multiply(A[1, :, :top], Qr[0, :, 1:top + 1], out=out[1, :, :top])
        out[1, :, top:] = 0.0
        xp.multiply(B[1], Qr[0, :, :L], out=tmp)
        out[1] += tmp
        return out.view(xp.complex128)

    def _h_coefficients(self, spec):
        """Coefficients ``(2, M, L, k)`` of a sum of H_n^m -> the P-coefficients ``(2, M, L1, k)`` of the same
        function (degree up to T+1): ``c_n = A_{n-1} s_{n-1} + B_{n+1} s_{n+1}``, parities swapped."""
        xp, L, L1 = self.xp, self.L, self.L1
        sr = _real_view(spec)
        A, B, _ = self._wide(sr.shape[-1])
        out = xp.zeros(sr.shape[:2] + (L1, sr.shape[-1]))
        tmp = xp.empty(sr.shape[1:])
        n1 = min(L, L1 - 1)
        xp.multiply(A[1, :, :n1], sr[1, :, :n1], out=out[0, :, 1:n1 + 1])
        xp.multiply(B[1], sr[1], out=tmp)
        out[0, :, :L] += tmp
        xp.multiply(A[0], sr[0], out=out[1, :, :L])
        xp.multiply(B[0, :, 1:], sr[0, :, 1:], out=tmp[:, :L - 1])
        out[1, :, :L - 1] += tmp[:, :L - 1]
        return out.view(xp.complex128)

    def _pad(self, spec):
        """Spectral ``(2, M, L, ...)`` -> ``(2, M, L1, ...)`` with zeros."""
        xp = self.xp
        if self.L1 == self.L:
            return spec
        return xp.concatenate([spec, xp.zeros(spec.shape[:2] + (self.L1 - self.L,) + spec.shape[3:], spec.dtype)],
                              axis=2)

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
        spec = self._analyse(self._fourier(g))
        return self.xp.moveaxis(spec, -1, 0).reshape(lead + self.spectral_shape)

    def spec_to_grid(self, spec):
        """Synthesis: spectral ``(..., 2, T+1, L)`` -> grid ``(..., nlat, nlon)`` float64."""
        xp = self.xp
        s = xp.asarray(spec, dtype=xp.complex128)
        lead = s.shape[:-3]
        s = xp.moveaxis(s.reshape((-1,) + self.spectral_shape), 0, -1)
        return self._grids(self._synthesise(s)).reshape(lead + (self.nlat, self.nlon))

    def vrtdiv(self, u, v):
        r"""Vorticity and divergence spectra ``(..., 2, T+1, L)`` of the wind ``(u, v)`` (grids
        ``(..., nlat, nlon)`` in m/s; several wind fields share one pass over the Legendre table).

        Uses :math:`\zeta_n^m = \sum_j \frac{w_j}{a\cos\varphi_j}[im\,v_m\bar P_n^m + u_m H_n^m]` and
        :math:`\delta_n^m = \sum_j \frac{w_j}{a\cos\varphi_j}[im\,u_m\bar P_n^m - v_m H_n^m]`, the
        quadrature form of the curl and divergence after integrating the :math:`\mu`-derivative by parts
        [Hack & Jakob 1992, sec. 5a].
        """
        xp = self.xp
        gu, lead = self._as_stack(u)
        gv, lead_v = self._as_stack(v)
        if lead != lead_v:
            raise ValueError(f"u, v: expected the same shape, got {xp.asarray(u).shape} and {xp.asarray(v).shape}")
        k = gu.shape[0]
        Q = self._analyse(self._fourier([*gu, *gv], rows=self._rcos_half), self.T + 1)
        sP, sH = Q[:, :, :self.L], self._h_sums(Q)  # sP only enters times self._im, zero where n > T
        im = self._im[..., None]
        vrt, div = (xp.empty((k,) + self.spectral_shape, dtype=xp.complex128) for _ in range(2))
        vt, dt = xp.moveaxis(vrt, 0, -1), xp.moveaxis(div, 0, -1)  # (2, M, L, k) views
        xp.multiply(im, sP[..., k:], out=vt)
        vt += sH[..., :k]
        xp.multiply(im, sP[..., :k], out=dt)
        dt -= sH[..., k:]
        return vrt.reshape(lead + self.spectral_shape), div.reshape(lead + self.spectral_shape)

    def uv(self, vrt, div):
        r"""Winds ``(u, v)`` on the grid from vorticity and divergence spectra (``(..., 2, T+1, L)``).

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
        psi, chi = xp.asarray(psi, dtype=xp.complex128), xp.asarray(chi, dtype=xp.complex128)
        if psi.shape != chi.shape or psi.shape[-3:] != self.spectral_shape:
            raise ValueError(f"psi, chi: expected two arrays of shape (..., {', '.join(map(str, self.spectral_shape))})"
                             f", got {psi.shape} and {chi.shape}")
        lead = psi.shape[:-3]
        psi, chi = (xp.moveaxis(x.reshape((-1,) + self.spectral_shape), 0, -1) for x in (psi, chi))
        g = self._grids(self._synthesise(self._wind_coefficients(psi, chi)), rows=self._rcos_half)
        k = psi.shape[-1]
        return g[:k].reshape(lead + g.shape[1:]), g[k:].reshape(lead + g.shape[1:])

    def _wind_coefficients(self, psi, chi):
        """P-coefficients ``(2, M, L1, 2k)`` of ``a u cos`` then ``a v cos`` from potentials ``(2, M, L, k)``
        (see :meth:`uv`)."""
        xp, L, k = self.xp, self.L, psi.shape[-1]
        if self._compiled():
            out = np.zeros((2, self.T + 1, self.L1, 4 * k))
            spharm_compiled.wind_coefficients(_real_view(psi), _real_view(chi), self._A[..., 0], self._B[..., 0],
                                              self._m_valid, out)
            return out.view(np.complex128)
        c = self._h_coefficients(xp.concatenate([-psi, chi], axis=-1))
        c[:, :, :L, :k] += self._im[..., None] * chi
        c[:, :, :L, k:] += self._im[..., None] * psi
        return c

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
