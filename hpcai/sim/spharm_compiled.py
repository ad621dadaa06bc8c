r"""The spherical transform's compiled path: Legendre sums that compute :math:`\bar P_n^m` by their recurrence
as they go (no table in memory), spread over threads by order.

The numpy paths of :class:`~hpcai.sim.spharm.SphericalHarmonics` (the reference) read precomputed functions
(2 MB at T85, 15 MB at T170) for a few flops per value, so at T170 they are bound by memory traffic and hardly
use a second core. These kernels (numba, through :func:`hpcai.accel.jit`) instead run, for one order ``m`` at
a time, the normalised three-term recurrence

.. math:: \bar P_n^m = \frac{\mu \bar P_{n-1}^m - \epsilon_{n-1}^m \bar P_{n-2}^m}{\epsilon_n^m},
          \qquad \epsilon_n^m = \sqrt{\frac{n^2-m^2}{4n^2-1}},

upward in ``n`` from the sectoral :math:`\bar P_m^m` over the vector of northern latitudes (which stays in
the L1 cache), four degrees per pass, and fold each degree into the sums at once, as SHTns [Schaeffer 2013]
and ducc0 do. The hemisphere split uses :math:`\bar P_n^m(-\mu) = (-1)^{n+m}\bar P_n^m(\mu)`: even
``n - m`` meets the sum of the two hemispheres' Fourier coefficients, odd ``n - m`` their difference. Both
kernels read or write the FFT's own array ``(k, nlat, nlon // 2 + 1)``, so the split, the quadrature weights
and the transposition cost no separate pass. Orders are paired ``(i, T - i)`` so that each pair is the same
work, and :func:`run` hands chunks of pairs to threads as they come free. Two small loops do the vector
transforms' derivative algebra (:func:`h_sums`, :func:`wind_coefficients`), which as numpy expressions took
0.06-0.12 ms at T85, about as long as the sums.

The recurrence is the one :func:`~hpcai.sim.spharm.legendre_functions` (the table's source) runs, with the
same sectoral start and the same first latitude per order (rows where every function of the order up to
degree T+1 is below 1e-30 are skipped), so the paths agree to round-off; upward recurrence in ``n`` is
stable for the normalised functions [Hack & Jakob 1992, sec. 2a].

Reference: Schaeffer, N. (2013). Efficient spherical harmonic transforms aimed at pseudospectral numerical
simulations. Geochem. Geophys. Geosyst. 14, 751-758.
"""
from __future__ import annotations

import concurrent.futures
import itertools
import os
import threading
from typing import NamedTuple

import numpy as np

from .. import accel

_pool = None  # helper threads, made on first use
_pool_lock = threading.Lock()


def available() -> bool:
    """Whether the compiled kernels may run (numba installed and not switched off, see :mod:`hpcai.accel`)."""
    return legendre_analysis.available


def run(kernel, args, M: int, threads: int = 1):
    """Call ``kernel(*args, i0, i1)`` over the order pairs ``[0, (M + 1) // 2)`` on ``threads`` threads.

    The pairs are cut into chunks of equal work that the caller and ``threads - 1`` pool threads claim one at
    a time until none is left, and the call returns when every chunk is done: a helper that the OS has not
    yet scheduled (other processes on the cores) just finds no chunk left, instead of holding the others at
    a barrier as a static split (numba's ``prange`` with OpenMP) does.
    """
    global _pool
    pairs = (M + 1) // 2
    if threads <= 1 or pairs < 2:
        kernel(*args, 0, pairs)
        return
    nchunks = min(pairs, 4 * threads)
    edges = [pairs * c // nchunks for c in range(nchunks + 1)]
    claim, done, errors = itertools.count(), itertools.count(1), []
    finished = threading.Event()

    def work():
        while (c := next(claim)) < nchunks:
            try:
                kernel(*args, edges[c], edges[c + 1])
            except BaseException as e:  # re-raised by the caller
                errors.append(e)
            if next(done) == nchunks:
                finished.set()

    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = concurrent.futures.ThreadPoolExecutor(max(1, (os.cpu_count() or 2) - 1),
                                                              thread_name_prefix="hpcai-spharm")
    for _ in range(threads - 1):
        _pool.submit(work)
    work()
    finished.wait()
    if errors:
        raise errors[0]


class Recurrence(NamedTuple):
    """What the kernels need for truncation T on ``J`` northern latitudes (host arrays, a few hundred kB).

    ``R[m, l]``, ``Q[m, l]`` give :math:`\\bar P_{m+l}^m = R\\,\\mu\\,\\bar P_{m+l-1}^m - Q\\,\\bar P_{m+l-2}^m`
    for ``l >= 0``, with ``l = 0`` and ``l = 1`` set up so that the start ``(P_{m-2}, P_{m-1}) = (\\bar P_m^m, 0)``
    yields :math:`\\bar P_m^m` and :math:`\\sqrt{2m+3}\\,\\mu\\bar P_m^m` (one loop, no special cases).
    """
    mu: np.ndarray      # (J,) northern Gaussian nodes
    start: np.ndarray   # (M, J) sectoral functions P_m^m(mu_j)
    first: np.ndarray   # (M,) int64: first latitude index used for order m
    R: np.ndarray       # (M, T + 3)
    Q: np.ndarray       # (M, T + 3)


def recurrence(T: int, mu, P, eps) -> Recurrence:
    """The kernels' data from the northern nodes ``mu`` (J,) and ``P[m, n - m, j]`` up to degree T+1 (as
    :func:`~hpcai.sim.spharm.legendre_functions` gives it), whose sectoral row and 1e-30 cut they share;
    ``eps(n, m)`` the recurrence's :math:`\\epsilon_n^m` (``spharm._eps``, which the table was made with)."""
    M, J = T + 1, mu.size
    big = np.abs(P[:M]).max(axis=1) > 1e-30  # (M, J)
    first = np.where(big.any(axis=1), np.argmax(big, axis=1), J).astype(np.int64)
    m = np.arange(M, dtype=float)[:, None]
    l = np.arange(T + 3)[None, :]
    R = np.where(l >= 2, 1.0 / np.where(l >= 2, eps(m + l, m), 1.0), 0.0)
    Q = np.where(l >= 2, eps(m + l - 1, m) * R, 0.0)
    R[:, 1] = np.sqrt(2 * m[:, 0] + 3)
    Q[:, 0] = -1.0
    return Recurrence(np.ascontiguousarray(mu, dtype=np.float64), np.ascontiguousarray(P[:M, 0], np.float64),
                      first, np.ascontiguousarray(R), np.ascontiguousarray(Q))


@accel.jit(fastmath={"reassoc", "contract"})
def legendre_analysis(F, w, mu, start, first, R, Q, nmax, out, i0, i1):
    """Quadrature sums ``out[p, m, l, 2f + r] = sum_j w_j P_n^m(mu_j) (F[f, j, m] +- F[f, nlat-1-j, m])`` for
    ``n = m + 2l + p <= nmax`` (``r``: real, imaginary part) and the orders of the pairs ``[i0, i1)`` (see
    :func:`run`). ``out`` (2, M, >= slots, 2k) must be zero.

    Four degrees per pass over the latitudes: the recurrence runs in registers and each value of the data
    is loaded once for the four (the first field's pass runs the recurrence, later fields reuse its values).
    """
    nf, nlat = F.shape[0], F.shape[1]
    M = start.shape[0]
    J = nlat // 2
    for i in range(i0, i1):
        for h in range(2):
            m = i if h == 0 else M - 1 - i
            if h == 1 and m == i:
                continue
            j0 = first[m]
            nj = J - j0
            nl = nmax - m + 1
            if nj <= 0 or nl <= 0:
                continue
            d = np.empty((nf, 4, nj))  # per field: even real, even imaginary, odd real, odd imaginary
            for f in range(nf):
                for j in range(nj):
                    jn = j0 + j
                    a, b = F[f, jn, m], F[f, nlat - 1 - jn, m]
                    d[f, 0, j] = (a.real + b.real) * w[jn]
                    d[f, 1, j] = (a.imag + b.imag) * w[jn]
                    d[f, 2, j] = (a.real - b.real) * w[jn]
                    d[f, 3, j] = (a.imag - b.imag) * w[jn]
            x = mu[j0:]
            pe = start[m, j0:].copy()  # P_{n-2} (even n - m) and P_{n-1} (odd) of the recurrence
            po = np.zeros(nj)
            pb = np.empty((4, nj))     # the pass's four degrees, for the later fields
            l = 0
            while l + 3 < nl:
                r0, q0, r1, q1 = R[m, l], Q[m, l], R[m, l + 1], Q[m, l + 1]
                r2, q2, r3, q3 = R[m, l + 2], Q[m, l + 2], R[m, l + 3], Q[m, l + 3]
                for f in range(nf):
                    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
                    if f == 0:
                        for j in range(nj):
                            p0 = r0 * x[j] * po[j] - q0 * pe[j]
                            p1 = r1 * x[j] * p0 - q1 * po[j]
                            p2 = r2 * x[j] * p1 - q2 * p0
                            p3 = r3 * x[j] * p2 - q3 * p1
                            pe[j], po[j] = p2, p3
                            pb[0, j], pb[1, j], pb[2, j], pb[3, j] = p0, p1, p2, p3
                            s0 += p0 * d[0, 0, j]
                            s1 += p0 * d[0, 1, j]
                            s2 += p1 * d[0, 2, j]
                            s3 += p1 * d[0, 3, j]
                            s4 += p2 * d[0, 0, j]
                            s5 += p2 * d[0, 1, j]
                            s6 += p3 * d[0, 2, j]
                            s7 += p3 * d[0, 3, j]
                    else:
                        for j in range(nj):
                            s0 += pb[0, j] * d[f, 0, j]
                            s1 += pb[0, j] * d[f, 1, j]
                            s2 += pb[1, j] * d[f, 2, j]
                            s3 += pb[1, j] * d[f, 3, j]
                            s4 += pb[2, j] * d[f, 0, j]
                            s5 += pb[2, j] * d[f, 1, j]
                            s6 += pb[3, j] * d[f, 2, j]
                            s7 += pb[3, j] * d[f, 3, j]
                    s = l // 2
                    out[0, m, s, 2 * f], out[0, m, s, 2 * f + 1] = s0, s1
                    out[1, m, s, 2 * f], out[1, m, s, 2 * f + 1] = s2, s3
                    out[0, m, s + 1, 2 * f], out[0, m, s + 1, 2 * f + 1] = s4, s5
                    out[1, m, s + 1, 2 * f], out[1, m, s + 1, 2 * f + 1] = s6, s7
                l += 4
            while l < nl:  # the last degrees, one at a time
                p = l % 2
                r, q = R[m, l], Q[m, l]
                if p == 0:
                    for j in range(nj):
                        pe[j] = r * x[j] * po[j] - q * pe[j]
                    pl = pe
                else:
                    for j in range(nj):
                        po[j] = r * x[j] * pe[j] - q * po[j]
                    pl = po
                for f in range(nf):
                    s0 = s1 = 0.0
                    for j in range(nj):
                        s0 += pl[j] * d[f, 2 * p, j]
                        s1 += pl[j] * d[f, 2 * p + 1, j]
                    out[p, m, l // 2, 2 * f], out[p, m, l // 2, 2 * f + 1] = s0, s1
                l += 1


@accel.jit(fastmath={"reassoc", "contract"})
def legendre_synthesis(X, w, mu, start, first, R, Q, nmax, F, i0, i1):
    """Fourier coefficients ``F[f, j, m]`` (north) and ``F[f, nlat-1-j, m]`` (south): ``w_j`` times the sums
    ``sum_n P_n^m(mu_j) (X[0, m, l, 2f:2f+2] +- X[1, ...])`` over ``n = m + 2l + p <= nmax``, for the orders
    of the pairs ``[i0, i1)`` (columns ``m >= M`` of ``F`` (k, nlat, >= M) are left alone). Four degrees per
    pass over the latitudes, as :func:`legendre_analysis`."""
    nf, nlat = F.shape[0], F.shape[1]
    M = start.shape[0]
    J = nlat // 2
    for i in range(i0, i1):
        for h in range(2):
            m = i if h == 0 else M - 1 - i
            if h == 1 and m == i:
                continue
            j0 = first[m]
            nj = J - j0
            nl = nmax - m + 1
            for j in range(j0):
                for f in range(nf):
                    F[f, j, m] = 0.0
                    F[f, nlat - 1 - j, m] = 0.0
            if nj <= 0:
                continue
            acc = np.zeros((nf, 4, nj))  # per field: even real, even imaginary, odd real, odd imaginary
            x = mu[j0:]
            pe = start[m, j0:].copy()
            po = np.zeros(nj)
            pb = np.empty((4, nj))
            l = 0
            while l + 3 < nl:
                r0, q0, r1, q1 = R[m, l], Q[m, l], R[m, l + 1], Q[m, l + 1]
                r2, q2, r3, q3 = R[m, l + 2], Q[m, l + 2], R[m, l + 3], Q[m, l + 3]
                s = l // 2
                for f in range(nf):
                    c0, c1, c2, c3 = X[0, m, s, 2 * f], X[0, m, s, 2 * f + 1], X[1, m, s, 2 * f], X[1, m, s, 2 * f + 1]
                    c4, c5 = X[0, m, s + 1, 2 * f], X[0, m, s + 1, 2 * f + 1]
                    c6, c7 = X[1, m, s + 1, 2 * f], X[1, m, s + 1, 2 * f + 1]
                    if f == 0:
                        for j in range(nj):
                            p0 = r0 * x[j] * po[j] - q0 * pe[j]
                            p1 = r1 * x[j] * p0 - q1 * po[j]
                            p2 = r2 * x[j] * p1 - q2 * p0
                            p3 = r3 * x[j] * p2 - q3 * p1
                            pe[j], po[j] = p2, p3
                            pb[0, j], pb[1, j], pb[2, j], pb[3, j] = p0, p1, p2, p3
                            acc[0, 0, j] += p0 * c0 + p2 * c4
                            acc[0, 1, j] += p0 * c1 + p2 * c5
                            acc[0, 2, j] += p1 * c2 + p3 * c6
                            acc[0, 3, j] += p1 * c3 + p3 * c7
                    else:  # one loop per row, so that the compiler can vectorise it (one store stream)
                        for r, ca, cb in ((0, c0, c4), (1, c1, c5), (2, c2, c6), (3, c3, c7)):
                            row, pa, pc = acc[f, r], pb[r // 2], pb[r // 2 + 2]
                            for j in range(nj):
                                row[j] += pa[j] * ca + pc[j] * cb
                l += 4
            while l < nl:  # the last degrees, one at a time
                p = l % 2
                r, q = R[m, l], Q[m, l]
                if p == 0:
                    for j in range(nj):
                        pe[j] = r * x[j] * po[j] - q * pe[j]
                    pl = pe
                else:
                    for j in range(nj):
                        po[j] = r * x[j] * pe[j] - q * po[j]
                    pl = po
                for f in range(nf):
                    ca, cb = X[p, m, l // 2, 2 * f], X[p, m, l // 2, 2 * f + 1]
                    for j in range(nj):
                        acc[f, 2 * p, j] += pl[j] * ca
                        acc[f, 2 * p + 1, j] += pl[j] * cb
                l += 1
            for f in range(nf):
                for j in range(nj):
                    jn = j0 + j
                    er, ei = acc[f, 0, j] * w[jn], acc[f, 1, j] * w[jn]
                    orr, oi = acc[f, 2, j] * w[jn], acc[f, 3, j] * w[jn]
                    F[f, jn, m] = complex(er + orr, ei + oi)
                    F[f, nlat - 1 - jn, m] = complex(er - orr, ei - oi)


@accel.jit(fastmath={"reassoc", "contract"})
def legendre_synthesis_each(X, w, mu, start, first, R, Q, nmax, F, i0, i1):
    """Fourier coefficients ``F[f, j, m]`` (north) and ``F[f, nlat-1-j, m]`` (south): ``w_j`` times the sums
    ``sum_n P_n^m(mu_j) (X[0, m, l, 2f:2f+2] +- X[1, ...])`` over ``n = m + 2l + p <= nmax``, for the orders
    of the pairs ``[i0, i1)`` (columns ``m >= M`` of ``F`` (k, nlat, >= M) are left alone): as
    :func:`legendre_synthesis`, but each field on its own, eight degrees per pass. For one field the faster
    (0.46 against 0.56 ms at T170: the pass keeps no functions for later fields); for several, recomputing the
    recurrence per field costs more than :func:`legendre_synthesis`'s stored functions.
    """
    nf, nlat = F.shape[0], F.shape[1]
    M = start.shape[0]
    J = nlat // 2
    for i in range(i0, i1):
        for h in range(2):
            m = i if h == 0 else M - 1 - i
            if h == 1 and m == i:
                continue
            j0 = first[m]
            nj = J - j0
            nl = nmax - m + 1
            for j in range(j0):
                for f in range(nf):
                    F[f, j, m] = 0.0
                    F[f, nlat - 1 - j, m] = 0.0
            if nj <= 0:
                continue
            x = mu[j0:]
            a0, a1, a2, a3 = np.empty(nj), np.empty(nj), np.empty(nj), np.empty(nj)  # even re, im; odd re, im
            pe, po = np.empty(nj), np.empty(nj)
            for f in range(nf):
                a0[:] = 0.0
                a1[:] = 0.0
                a2[:] = 0.0
                a3[:] = 0.0
                pe[:] = start[m, j0:]
                po[:] = 0.0
                l = 0
                while l + 7 < nl:
                    r0, q0, r1, q1 = R[m, l], Q[m, l], R[m, l + 1], Q[m, l + 1]
                    r2, q2, r3, q3 = R[m, l + 2], Q[m, l + 2], R[m, l + 3], Q[m, l + 3]
                    r4, q4, r5, q5 = R[m, l + 4], Q[m, l + 4], R[m, l + 5], Q[m, l + 5]
                    r6, q6, r7, q7 = R[m, l + 6], Q[m, l + 6], R[m, l + 7], Q[m, l + 7]
                    s, c = l // 2, 2 * f
                    e0, e1, o0, o1 = X[0, m, s, c], X[0, m, s, c + 1], X[1, m, s, c], X[1, m, s, c + 1]
                    e2, e3, o2, o3 = X[0, m, s + 1, c], X[0, m, s + 1, c + 1], X[1, m, s + 1, c], X[1, m, s + 1, c + 1]
                    e4, e5, o4, o5 = X[0, m, s + 2, c], X[0, m, s + 2, c + 1], X[1, m, s + 2, c], X[1, m, s + 2, c + 1]
                    e6, e7, o6, o7 = X[0, m, s + 3, c], X[0, m, s + 3, c + 1], X[1, m, s + 3, c], X[1, m, s + 3, c + 1]
                    for j in range(nj):
                        xj = x[j]
                        p0 = r0 * xj * po[j] - q0 * pe[j]
                        p1 = r1 * xj * p0 - q1 * po[j]
                        p2 = r2 * xj * p1 - q2 * p0
                        p3 = r3 * xj * p2 - q3 * p1
                        p4 = r4 * xj * p3 - q4 * p2
                        p5 = r5 * xj * p4 - q5 * p3
                        p6 = r6 * xj * p5 - q6 * p4
                        p7 = r7 * xj * p6 - q7 * p5
                        pe[j], po[j] = p6, p7
                        a0[j] += p0 * e0 + p2 * e2 + p4 * e4 + p6 * e6
                        a1[j] += p0 * e1 + p2 * e3 + p4 * e5 + p6 * e7
                        a2[j] += p1 * o0 + p3 * o2 + p5 * o4 + p7 * o6
                        a3[j] += p1 * o1 + p3 * o3 + p5 * o5 + p7 * o7
                    l += 8
                while l < nl:  # the last degrees, one at a time
                    p = l % 2
                    r, q = R[m, l], Q[m, l]
                    ca, cb = X[p, m, l // 2, 2 * f], X[p, m, l // 2, 2 * f + 1]
                    if p == 0:
                        for j in range(nj):
                            pe[j] = r * x[j] * po[j] - q * pe[j]
                            a0[j] += pe[j] * ca
                            a1[j] += pe[j] * cb
                    else:
                        for j in range(nj):
                            po[j] = r * x[j] * pe[j] - q * po[j]
                            a2[j] += po[j] * ca
                            a3[j] += po[j] * cb
                    l += 1
                for j in range(nj):
                    jn = j0 + j
                    er, ei, orr, oi = a0[j] * w[jn], a1[j] * w[jn], a2[j] * w[jn], a3[j] * w[jn]
                    F[f, jn, m] = complex(er + orr, ei + oi)
                    F[f, nlat - 1 - jn, m] = complex(er - orr, ei - oi)


@accel.jit
def h_sums(Q, A, B, out):
    """H-sums ``out (2, M, L, kk)`` from P-sums ``Q (2, M, >= L, kk)`` up to degree T+1 (real columns):
    :math:`H_n^m = A_n P_{n+1}^m + B_n P_{n-1}^m` with ``A, B (2, M, L)``; ``n - m`` even takes ``Q`` at
    ``n +- 1`` from the odd slots and vice versa (the numpy reference is ``SphericalHarmonics._h_sums``)."""
    M, L, kk = out.shape[1], out.shape[2], out.shape[3]
    LQ = Q.shape[2]
    for m in range(M):
        for l in range(L):
            a0, b0, a1, b1 = A[0, m, l], B[0, m, l], A[1, m, l], B[1, m, l]
            for c in range(kk):
                s0 = a0 * Q[1, m, l, c]
                if l >= 1:
                    s0 += b0 * Q[1, m, l - 1, c]
                s1 = b1 * Q[0, m, l, c]
                if l + 1 < LQ:
                    s1 += a1 * Q[0, m, l + 1, c]
                out[0, m, l, c] = s0
                out[1, m, l, c] = s1


@accel.jit
def wind_coefficients(psi, chi, A, B, mv, out):
    """P-coefficients ``out (2, M, L1, 4k)`` (zero on entry) of ``a u cos`` (columns ``[0, 2k)``) and ``a v cos``
    (``[2k, 4k)``) from the potentials ``psi, chi (2, M, L, 2k)`` (real views): the H-coefficients of ``-psi``
    and ``chi`` as P-coefficients one degree higher (:math:`c_n = A_{n-1} s_{n-1} + B_{n+1} s_{n+1}`, parities
    swapped), plus ``i m chi`` and ``i m psi`` (``mv``: ``m`` where ``n <= T``, else 0). The numpy reference
    is ``SphericalHarmonics._wind_coefficients``."""
    M, L, kk = psi.shape[1], psi.shape[2], psi.shape[3]
    L1 = out.shape[2]
    for m in range(M):
        for l in range(L):
            a0, b0, a1, b1 = A[0, m, l], B[0, m, l], A[1, m, l], B[1, m, l]
            for c in range(kk):
                u1, v1, u0, v0 = -psi[1, m, l, c], chi[1, m, l, c], -psi[0, m, l, c], chi[0, m, l, c]
                if l + 1 < L1:
                    out[0, m, l + 1, c] += a1 * u1
                    out[0, m, l + 1, kk + c] += a1 * v1
                out[0, m, l, c] += b1 * u1
                out[0, m, l, kk + c] += b1 * v1
                out[1, m, l, c] += a0 * u0
                out[1, m, l, kk + c] += a0 * v0
                if l >= 1:
                    out[1, m, l - 1, c] += b0 * u0
                    out[1, m, l - 1, kk + c] += b0 * v0
            for p in range(2):
                f = mv[p, m, l]
                for c in range(0, kk, 2):
                    out[p, m, l, c] -= f * chi[p, m, l, c + 1]
                    out[p, m, l, c + 1] += f * chi[p, m, l, c]
                    out[p, m, l, kk + c] -= f * psi[p, m, l, c + 1]
                    out[p, m, l, kk + c + 1] += f * psi[p, m, l, c]
