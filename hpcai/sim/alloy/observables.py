r"""Observables of alloy configurations and their statistics: order, short-range order, C_v, Binder, errors.

Configuration observables act on occupation arrays ``(..., n_sites)`` and return one value (or array)
per configuration:

* :func:`order_parameter` -- Bragg-Williams long-range order of B2, L1_0 or L1_2 from sublattice
  concentrations, 1 in the perfect structure and :math:`O(N^{-1/2})` in a random alloy;
* :func:`warren_cowley` -- :math:`\alpha^{(s)}_{ab} = 1 - P_s(b\mid a)/c_b` per neighbour shell [Cowley 1950].

Estimators of a Monte Carlo time series (sample axis 0):

* :func:`heat_capacity` :math:`C/k_B = \mathrm{Var}(E)/(k_BT)^2` and :func:`binder_cumulant`
  :math:`U_L = 1 - \langle m^4\rangle / 3\langle m^2\rangle^2` [Binder 1981];
* errors: :func:`autocorrelation_time` (integrated, Sokal's window), :func:`blocking_error` (Flyvbjerg &
  Petersen's blocking with Jonsson's automatic choice of block size) and the block jackknife
  (:func:`block_means` then :func:`jackknife`) for non-linear estimators such as :math:`C` and :math:`U_L`.

References
----------
Cowley, J. M. (1950). An approximate theory of order in alloys. Phys. Rev. 77, 669-675.
Binder, K. (1981). Finite size scaling analysis of Ising model block distribution functions. Z. Phys. B 43,
119-140.
Flyvbjerg, H. and Petersen, H. G. (1989). Error estimates on averages of correlated data. J. Chem. Phys. 91,
461-466.
Jonsson, M. (2018). Standard error estimation by an automated blocking method. Phys. Rev. E 98, 043304.
Sokal, A. D. (1997). Monte Carlo methods in statistical mechanics: foundations and new algorithms. In
Functional Integration, NATO ASI Series B 361, 131-192 (sec. 3, automatic windowing with c ~ 5).
Efron, B. (1982). The Jackknife, the Bootstrap and Other Resampling Plans. SIAM.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import scipy.special

from ... import checks
from .lattice import Lattice, check_occupation, sublattices

__all__ = ["Estimate", "autocorrelation_time", "binder_cumulant", "block_means", "blocking_error",
           "heat_capacity", "jackknife", "order_parameter", "warren_cowley"]


class Estimate(NamedTuple):
    """A value and its one-standard-deviation statistical error (arrays of the same shape)."""

    value: np.ndarray
    error: np.ndarray


# ----------------------------------------------------------------------------------- configuration level
def order_parameter(occupation, lattice: Lattice, structure: str, species: int | None = None) -> np.ndarray:
    r"""Long-range order parameter of ``structure`` (B2, L1_0, L1_2), shape ``occupation.shape[:-1]``.

    With :math:`m` equal sublattices, :math:`c_k` the concentration of ``species`` on sublattice
    :math:`k` and :math:`c` overall, :math:`\eta = \max_k (c_k - c)/(\min(1, mc) - c)`, maximised over the
    structure's variants too (L1_0: layering along x, y, z). It is 1 in the perfectly ordered structure,
    0 when every sublattice has the average concentration. ``species`` defaults to the minority species of
    each configuration (Au in Cu3Au; the lower index on a tie), whose sublattice it picks out. For B2 at
    50/50 it is :math:`|c_0 - c_1|`, the staggered magnetisation of the equivalent Ising antiferromagnet.
    """
    labels = sublattices(lattice, structure)
    occupation = check_occupation("occupation", occupation, lattice, 127)
    if species is None:
        present = np.stack([(occupation == s).sum(-1) for s in range(int(occupation.max(initial=0)) + 1)], -1)
        species = np.where(present > 0, present, lattice.n_sites + 1).argmin(-1)[..., None]
    else:
        species = checks.integer("species", species, 0, 126)
    m = int(labels.max()) + 1
    weights = np.zeros((lattice.n_sites, len(labels), m))
    weights[np.arange(lattice.n_sites)[:, None], np.arange(len(labels)), labels.T] = m / lattice.n_sites
    x = (occupation == species).astype(np.float64)
    c_k = (x @ weights.reshape(lattice.n_sites, -1)).reshape(x.shape[:-1] + (-1,))
    c = x.mean(-1, keepdims=True)
    room = np.minimum(1.0, m * c) - c
    eta = np.divide(c_k - c, room, out=np.zeros_like(c_k), where=room > 0)
    return eta.max(-1)


def warren_cowley(occupation, lattice: Lattice, n_species: int = 2) -> np.ndarray:
    r"""Warren-Cowley short-range order :math:`\alpha^{(s)}_{ab} = 1 - P_s(b\mid a)/c_b`, shape
    ``(..., n_shells, n_species, n_species)``.

    :math:`P_s(b\mid a)` is the fraction of shell-:math:`s` neighbours of :math:`a` atoms that are
    :math:`b`. 0 in an ideal random alloy, negative for unlike pairs that attract (ordering), positive
    for clustering; perfect B2 has :math:`\alpha^{(1)}_{01} = -1`. NaN where a species is absent.
    """
    n_species = checks.integer("n_species", n_species, 2, 127)
    occupation = check_occupation("occupation", occupation, lattice, n_species)
    onehot = (occupation[..., None, :] == np.arange(n_species)[:, None]).astype(np.float64)  # (..., S, N)
    atoms = onehot.sum(-1)                                                                  # (..., S)
    alphas = []
    for z, nbr in zip(lattice.coordination, lattice.neighbors):
        neigh = occupation[..., nbr]                                                        # (..., N, z)
        around = np.stack([(neigh == b).sum(-1) for b in range(n_species)], -1).astype(np.float64)
        pairs = onehot @ around                                                             # (..., S, S)
        with np.errstate(invalid="ignore", divide="ignore"):
            p = pairs / (atoms[..., :, None] * z)
            alphas.append(1.0 - p / (atoms[..., None, :] / lattice.n_sites))
    return np.stack(alphas, axis=-3)


# --------------------------------------------------------------------------------------- time series
def heat_capacity(energies, temperature, n_sites: int = 1) -> np.ndarray:
    r"""Heat capacity from energy fluctuations, :math:`C/k_B = (\langle E^2\rangle - \langle E\rangle^2)/(k_BT)^2`,
    per site if ``n_sites`` is given; samples along axis 0, ``temperature`` (:math:`k_BT`) broadcasts."""
    e = np.asarray(energies, dtype=np.float64)
    return e.var(axis=0) / np.asarray(temperature, dtype=np.float64) ** 2 / n_sites


def binder_cumulant(m) -> np.ndarray:
    r"""Fourth-order cumulant :math:`U_L = 1 - \langle m^4\rangle/(3\langle m^2\rangle^2)` over axis 0: 2/3
    in an ordered phase, 0 for Gaussian fluctuations; curves of different :math:`L` cross at :math:`T_c`."""
    m2 = np.asarray(m, dtype=np.float64) ** 2
    return 1.0 - (m2 ** 2).mean(0) / (3.0 * m2.mean(0) ** 2)


def autocorrelation_time(x, window: float = 5.0) -> np.ndarray:
    r"""Integrated autocorrelation time :math:`\tau = \frac12 + \sum_{t\ge1}\rho(t)` of series along axis 0
    (in samples), with Sokal's automatic window: the smallest :math:`W` with :math:`W \ge c\,\tau(W)`.

    The error of a mean of :math:`n` samples is :math:`\sqrt{2\tau\,\mathrm{Var}(x)/n}`.
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n < 2:
        raise ValueError(f"x: expected at least 2 samples, got {n}")
    d = x - x.mean(0)
    f = np.fft.rfft(d, n=2 * n, axis=0)
    acov = np.fft.irfft(f * np.conj(f), axis=0)[:n]
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = acov / acov[:1]
    tau = 0.5 + np.concatenate([np.zeros((1,) + x.shape[1:]), np.cumsum(rho[1:], axis=0)], axis=0)
    enough = np.arange(n).reshape((-1,) + (1,) * (x.ndim - 1)) >= window * tau
    cut = np.where(enough.any(0), enough.argmax(0), n - 1)
    out = np.take_along_axis(tau, cut[None], axis=0)[0]
    return np.where(acov[0] > 0, out, 0.5)


def blocking_error(x) -> float:
    """Standard error of the mean of a correlated 1-d series by blocking [Flyvbjerg & Petersen 1989],
    the block size chosen automatically by Jonsson's (2018) test; the series is cut to a power of 2."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1 or len(x) < 4:
        raise ValueError(f"x: expected a 1-d series of at least 4 samples, got shape {x.shape}")
    d = int(np.log2(len(x)))
    x = x[len(x) - 2 ** d:]
    gamma, s = np.zeros(d), np.zeros(d)
    for k in range(d):
        n = len(x)
        mu = x.mean()
        gamma[k] = ((x[:-1] - mu) * (x[1:] - mu)).sum() / n
        s[k] = x.var()
        x = 0.5 * (x[0::2] + x[1::2])
    if not s[0] > 0:
        return 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.nan_to_num(gamma / s) ** 2 * 2.0 ** np.arange(d, 0, -1)
    m = np.cumsum(m[::-1])[::-1]
    q = scipy.special.chdtri(np.arange(1, d + 1), 0.01)              # the chi-square 0.99 quantiles
    k = int(np.argmax(m < q)) if (m < q).any() else d - 1
    return float(np.sqrt(s[k] / 2 ** (d - k)))


def block_means(samples, blocks: int = 16, replica_axis: int | None = None) -> np.ndarray:
    """Means over ``blocks`` consecutive blocks of samples (axis 0), shape ``(blocks, ...)``.

    With ``replica_axis``, independent replicas are blocked separately and their blocks stacked, giving
    ``(blocks * replicas, ...)`` with that axis removed. A trailing remainder of samples is dropped.
    """
    x = np.asarray(samples, dtype=np.float64)
    blocks = checks.integer("blocks", blocks, 2, max(2, len(x)))
    if len(x) < blocks:
        raise ValueError(f"samples: {len(x)} samples cannot fill {blocks} blocks")
    n = len(x) // blocks * blocks
    means = x[:n].reshape((blocks, n // blocks) + x.shape[1:]).mean(1)
    if replica_axis is not None:
        axis = checks.integer("replica_axis", replica_axis, 1, x.ndim - 1)
        means = np.moveaxis(means, axis, 1).reshape((-1,) + means.shape[1:axis] + means.shape[axis + 1:])
    return means


def jackknife(estimator: Callable[[np.ndarray], np.ndarray], means) -> Estimate:
    r"""Block-jackknife estimate and error of ``estimator`` applied to averages [Efron 1982].

    ``means`` are block averages ``(n_blocks, ...)`` (:func:`block_means`) of whatever the estimator needs
    -- e.g. :math:`E` and :math:`E^2` stacked on the last axis. ``estimator`` maps an average ``(...)`` to
    the estimate, and must also accept a leading block axis. The value is the estimator of the overall
    average; the error :math:`\sqrt{\frac{n-1}{n}\sum_k(\theta_{(k)} - \bar\theta)^2}` from the
    leave-one-block-out estimates :math:`\theta_{(k)}`.
    """
    means = np.asarray(means, dtype=np.float64)
    n = len(means)
    if n < 2:
        raise ValueError(f"means: the jackknife needs at least 2 blocks, got {n}")
    leave_one_out = (means.sum(0) - means) / (n - 1)
    theta = np.asarray(estimator(leave_one_out))
    error = np.sqrt((n - 1) / n * ((theta - theta.mean(0)) ** 2).sum(0))
    return Estimate(np.asarray(estimator(means.mean(0))), error)
