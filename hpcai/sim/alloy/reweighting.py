r"""Multiple-histogram reweighting: canonical averages at any temperature between the simulated ones.

Samples :math:`x` drawn at inverse temperatures :math:`\beta_k` (:math:`n_k` each) are pooled into one
estimate of the density of states; the dimensionless free energies :math:`f_k = -\ln Z_k` solve

.. math::
    f_k = -\ln\sum_x \frac{e^{-\beta_k E_x}}{\sum_j n_j e^{f_j - \beta_j E_x}}
    \qquad\text{[Ferrenberg \& Swendsen 1989, eqs. 3-4, unbinned]},

and an average at any :math:`\beta` weights sample :math:`x` by
:math:`e^{-\beta E_x} / \sum_j n_j e^{f_j - \beta_j E_x}`. The fixed point starts from the free-energy
perturbation chain :math:`f_{k+1} - f_k = -\ln\langle e^{-(\beta_{k+1}-\beta_k)E}\rangle_k` and converges
in a few tens of iterations when neighbouring energy histograms overlap -- which is also what makes
replica exchange accept, so a scan with a healthy exchange rate is a good input. Everything is done in
log space (``scipy.special.logsumexp``), so cell energies of any size are safe.

Curves from reweighting are smooth in :math:`T`, so Binder cumulants of different sizes can be crossed
exactly instead of through a fitted polynomial (which biases the crossing when the curves are steep).

References
----------
Ferrenberg, A. M. and Swendsen, R. H. (1989). Optimized Monte Carlo data analysis. Phys. Rev. Lett. 63,
1195-1198.
Shirts, M. R. and Chodera, J. D. (2008). Statistically optimal analysis of samples from multiple equilibrium
states. J. Chem. Phys. 129, 124105 (the same estimator, unbinned: MBAR).
"""
from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from ... import checks
from .montecarlo import check_temperatures

__all__ = ["Reweighting"]


class Reweighting:
    """Pooled canonical samples from several temperatures, reweighted to any temperature in their range.

    Parameters
    ----------
    energies : array_like, shape (..., n_T)
        Energy samples, the last axis the simulated temperature (all other axes are samples at it).
    temperatures : array_like, shape (n_T,)
        :math:`k_BT` of the simulations, in the energy unit.
    mask : array_like of bool, optional
        Samples to use (shape of ``energies``), e.g. all but one jackknife group; the same number must
        remain at every temperature.
    initial : ndarray, optional
        Starting free energies (a solution for similar data converges in a few iterations).
    """

    def __init__(self, energies, temperatures, mask=None, initial=None, tol: float = 1e-9,
                 max_iterations: int = 20000):
        self.beta = 1.0 / check_temperatures("temperatures", temperatures)
        E = np.asarray(energies, dtype=np.float64)
        k = len(self.beta)
        if self.beta.ndim != 1 or E.ndim < 1 or E.shape[-1] != k:
            raise ValueError(f"energies: expected shape (..., {k}) for {k} temperatures, got {E.shape}")
        self._shape = E.shape
        self._mask = None
        if mask is not None:
            self._mask = np.broadcast_to(np.asarray(mask, dtype=bool), E.shape).reshape(-1, k)
            counts = self._mask.sum(0)
            if counts.min() != counts.max() or counts[0] == 0:
                raise ValueError(f"mask: expected the same number of samples at every temperature, got {counts}")
        rows = self._kept(E.reshape(-1, k))                                         # (samples, n_T)
        self.shift = float(rows.mean())
        self._e = (rows - self.shift).reshape(-1)                                   # pooled, sample-major
        self._log_n = np.log(len(rows))
        tol = checks.number("tol", tol, 0.0, low_open=True)
        self.free_energies = self._solve(rows - self.shift, initial, tol, max_iterations)

    def _kept(self, rows: np.ndarray) -> np.ndarray:
        """``rows (samples, n_T, ...)`` restricted to the samples the mask keeps."""
        if self._mask is None:
            return rows
        picked = np.moveaxis(rows, 1, 0)[self._mask.T]                               # temperature-major
        return np.moveaxis(picked.reshape((len(self.beta), -1) + rows.shape[2:]), 0, 1)

    def _solve(self, rows, initial, tol, max_iterations):
        beta = self.beta
        if initial is None:                                   # free-energy perturbation chain
            step = [-logsumexp(-(beta[k + 1] - beta[k]) * rows[:, k]) + np.log(len(rows))
                    for k in range(len(beta) - 1)]
            f = np.concatenate([[0.0], np.cumsum(step)])
        else:
            f = np.asarray(initial, dtype=np.float64).copy()
        bE = beta[:, None] * self._e[None, :]
        self.iterations = 0
        while self.iterations < max_iterations:
            self.iterations += 1
            self._log_denominator = logsumexp(self._log_n + f[:, None] - bE, axis=0)
            new = -logsumexp(-bE - self._log_denominator, axis=1)
            new -= new[0]
            if np.abs(new - f).max() < tol:
                return new
            f = new
        raise RuntimeError(f"reweighting: the free energies did not converge in {max_iterations} iterations "
                           f"(do neighbouring temperatures' energy histograms overlap?)")

    def weights(self, temperatures) -> np.ndarray:
        """Normalised weights ``(len(temperatures), n_samples)`` of the pooled samples at each :math:`k_BT`."""
        beta = 1.0 / np.atleast_1d(np.asarray(temperatures, dtype=np.float64))
        log_w = -beta[:, None] * self._e[None, :] - self._log_denominator
        return np.exp(log_w - logsumexp(log_w, axis=1, keepdims=True))

    def pooled(self, values) -> np.ndarray:
        """``values`` shaped like ``energies`` (plus any trailing axes), pooled in the samples' order."""
        v = np.asarray(values, dtype=np.float64)
        if v.shape[:len(self._shape)] != self._shape:
            raise ValueError(f"values: expected a leading shape {self._shape} like the energies, got {v.shape}")
        rows = self._kept(v.reshape((-1, len(self.beta)) + v.shape[len(self._shape):]))
        return rows.reshape((-1,) + rows.shape[2:])

    def mean(self, values, temperatures) -> np.ndarray:
        """Canonical averages of ``values`` (laid out like ``energies``) at each of ``temperatures``."""
        return np.tensordot(self.weights(temperatures), self.pooled(values), axes=1)

    def energy_moments(self, temperatures) -> tuple[np.ndarray, np.ndarray]:
        """:math:`\\langle E\\rangle` and :math:`\\mathrm{Var}(E)` at each temperature."""
        w = self.weights(temperatures)
        mean = w @ self._e
        return mean + self.shift, w @ self._e ** 2 - mean ** 2
