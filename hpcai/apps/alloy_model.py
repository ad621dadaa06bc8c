"""The alloy surrogate: an ensemble of per-site networks whose sum over the sites is a cell's energy.

Each network maps one site's environment -- its species, the species counts of its neighbour shells and,
with ``triplets``, how many of its neighbour pairs are alike or unlike
(:meth:`hpcai.sim.alloy.SiteEnergyModel.site_features`) -- to that site's energy, as in Behler &
Parrinello (2007, PRL 98, 146401), with one set of weights per species of the site (the features are
expanded species by species, so a site of species A never shares a weight with a site of species B).
A linear term on the same features, fitted first by least squares, carries what a cluster expansion with
pairs (and, with ``triplets``, three-site clusters through a site) would -- such a model is exactly linear
in them; the networks learn only the residual beyond it.

The spread of ``ensemble`` networks trained from different initialisations (Lakshminarayanan et al.
2017, "Simple and scalable predictive uncertainty estimation using deep ensembles") is the uncertainty
that active learning uses to choose which configurations to send to the reference calculation. Inside
the Monte Carlo the ensemble's mean is a :class:`~hpcai.sim.alloy.SiteEnergyModel`, so a trial swap
costs the sites it changes, not a cell; without triplet features a site's inputs take few distinct values
(26 environments for binary fcc with one shell), so the ensemble is evaluated once per environment into a
table (:mod:`hpcai.sim.alloy.local`, rebuilt after every :meth:`Surrogate.fit` and
:meth:`Surrogate.load_vector`) and a trial is a few look-ups in it. With ``triplets`` the environments are too
many for a table, so they are memoised instead (:mod:`hpcai.sim.alloy.memo`, forgotten at the same points):
the ensemble runs once per environment the Monte Carlo meets. Either way each chain keeps its sites' keys and
energies (:class:`~hpcai.sim.alloy.SwapState`), so a trial prices the affected sites by their keys and runs the
networks only on environments not met before -- a few at a time, so they run as one set of plain array products
(:meth:`Surrogate._stacked`), not through autograd.
"""
from __future__ import annotations

import numpy as np
import scipy.linalg

from .. import checks, nn, ops, optim
from ..autograd import Tensor, no_grad
from ..sim.alloy import Lattice, SiteEnergyModel
from ..train import fit

STD_FLOOR = 1e-6  # eV per site: a residual below this is nothing to learn (a pair model's, fitted exactly)
RCOND = 1e-6  # singular values of the cell features below this (relative) are float32 rounding, not data


class SiteNet(nn.Module):
    """Per-site energies of (cells, sites, inputs) rows; forward gives each cell's mean site energy."""

    def __init__(self, n_inputs: int, hidden: int, seed: int):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.net = nn.Sequential(nn.Linear(n_inputs, hidden, rng=rng), nn.Tanh(), nn.Linear(hidden, hidden, rng=rng),
                                 nn.Tanh(), nn.Linear(hidden, 1, rng=rng))

    def sites(self, x):
        """(..., n_inputs) -> (..., 1): the standardised residual energy of each site."""
        return self.net(x)

    def forward(self, x):
        return ops.mean(self.sites(x), axis=(1, 2))


class Surrogate:
    """An ensemble of :class:`SiteNet` for cells of ``lattice`` with ``n_species`` species.

    Energies are in the reference's unit (eV per cell). A site's energy is ``x . w`` (least squares) plus
    ``mean + std * net(x)``, the networks trained on the standardised residual of the training set.
    """

    def __init__(self, lattice: Lattice, n_species: int, hidden: int = 16, ensemble: int = 4, seed: int = 0,
                 precision: str = "fp32", triplets: int = 0):
        self.lattice, self.n_species = lattice, n_species
        self.hidden = checks.integer("hidden", hidden, 1)
        self.size = checks.integer("ensemble", ensemble, 1)
        self.seed, self.precision = checks.integer("seed", seed, 0), precision
        self.features = SiteEnergyModel(lattice, n_species, self._site_energies, triplets)  # the MC's view
        counts = self.features.n_features - n_species                # neighbour (and neighbour-pair) counts
        self.n_inputs = n_species * (1 + counts)
        self._scale = self.features.feature_scale                    # counts -> fractions
        self.w, self.mean, self.std = np.zeros(self.n_inputs), 0.0, 1.0
        self.nets = [SiteNet(self.n_inputs, self.hidden, self.seed + 7919 * k) for k in range(self.size)]
        self.history: list = []
        self._stack = None                                           # _stacked(), made after each training

    # -- inputs ------------------------------------------------------------------------------------------
    def expand(self, features: np.ndarray) -> np.ndarray:
        """Site feature rows (..., n_features) -> the networks' inputs (..., n_inputs), float32: for the site's
        species, [1, neighbour (and neighbour-pair) fractions]; zeros in the other species' block."""
        S = self.n_species
        own, counts = features[..., :S], features[..., S:] / self._scale
        block = np.concatenate([np.ones(features.shape[:-1] + (1,)), counts], axis=-1)
        return (own[..., :, None] * block[..., None, :]).reshape(features.shape[:-1] + (-1,)).astype(np.float32)

    def inputs(self, occupation: np.ndarray) -> np.ndarray:
        """Network inputs of configurations (B, n_sites) -> (B, n_sites, n_inputs)."""
        return self.expand(self.features.site_features(occupation))

    # -- training ----------------------------------------------------------------------------------------
    def fit(self, occupation: np.ndarray, energies: np.ndarray, epochs: int = 300, lr: float = 3e-3,
            optimizer: str = "adam", batch_size: int = 32) -> list:
        """Train every network on configurations (n, n_sites) and their energies (n,) in eV per cell, from
        the current weights (active learning continues training as data arrive). Returns the final losses."""
        energies = checks.array("energies", np.asarray(energies, np.float64), ndim=1, finite=True)
        if len(energies) != len(occupation) or len(energies) < 2:
            raise ValueError(f"energies: expected one energy per configuration (at least 2), got {len(energies)} "
                             f"for {len(occupation)} configurations")
        per_site = energies / self.lattice.n_sites
        x = self.inputs(occupation)
        cells = x.mean(axis=1, dtype=np.float64)                 # a cell's energy per site is linear in these
        # the counts obey sum rules, so some directions of `cells` are float32 rounding alone: fitting them
        # would put huge weights on noise (errors of eV per atom from a few configurations); cut them
        self.w = np.linalg.lstsq(cells, per_site, rcond=RCOND)[0]
        self.features.invalidate()
        residual = per_site - cells @ self.w
        self.mean, self.std = float(residual.mean()), max(float(residual.std()), STD_FLOOR)
        y = ((residual - self.mean) / self.std).astype(np.float32)
        losses = []
        for k, net in enumerate(self.nets):
            opt = optim.get_optimizer(optimizer, net.parameters(), lr=lr)
            history = fit(net, (x, y), "mse", opt, epochs=epochs, batch_size=batch_size, verbose=0,
                          seed=self.seed + 104729 * k + len(y), precision=self.precision)
            losses.append(float(history["loss"][-1]))
        self._weights_changed()
        self.history.append(losses)
        return losses

    # -- prediction --------------------------------------------------------------------------------------
    def predict(self, occupation: np.ndarray) -> np.ndarray:
        """Every network's energy (eV per cell) of configurations (B, n_sites): shape (ensemble, B)."""
        x = self.inputs(occupation)
        with no_grad():
            out = np.stack([net(Tensor(x)).data for net in self.nets]).astype(np.float64)
        linear = x.mean(axis=1, dtype=np.float64) @ self.w
        return (linear + out * self.std + self.mean) * self.lattice.n_sites

    def energies(self, occupation: np.ndarray) -> np.ndarray:
        """The ensemble's mean energy (eV per cell)."""
        return self.predict(occupation).mean(0)

    def spread(self, occupation: np.ndarray) -> np.ndarray:
        """The ensemble's standard deviation of the energy per site (eV), the active learner's uncertainty."""
        return self.predict(occupation).std(0) / self.lattice.n_sites

    def _site_energies(self, features: np.ndarray) -> np.ndarray:
        x = self.expand(features)
        out = x
        for step in self._stacked():
            out = np.tanh(out) if step is None else out @ step[0] + step[1]
        return x.astype(np.float64) @ self.w + out.reshape(-1).astype(np.float64) * self.std + self.mean

    def _stacked(self) -> list:
        """The ensemble's mean site network as plain steps, layer by layer of :class:`SiteNet`, the networks
        side by side: (weight, bias) for a Linear (the first one's outputs concatenated, hidden ones
        block-diagonal, the last one averaging the networks), None for a Tanh. Made once per training: the
        Monte Carlo evaluates a few new environments at a time, where one product per layer beats four
        autograd networks by far."""
        if self._stack is None:
            layers = list(zip(*(net.net for net in self.nets)))          # the k-th layer of every network
            linear = [k for k, group in enumerate(layers) if isinstance(group[0], nn.Linear)]
            steps = []
            for k, group in enumerate(layers):
                if isinstance(group[0], nn.Tanh):
                    steps.append(None)
                    continue
                if not isinstance(group[0], nn.Linear):
                    raise TypeError(f"SiteNet: no plain form of a {type(group[0]).__name__} layer")
                w, b = [layer.weight.data.T for layer in group], [layer.bias.data for layer in group]
                if k == linear[-1]:
                    steps.append((np.concatenate(w) / np.float32(self.size), np.float32(sum(b)[0] / self.size)))
                elif k == linear[0]:
                    steps.append((np.concatenate(w, axis=1), np.concatenate(b)))
                else:
                    steps.append((scipy.linalg.block_diag(*w).astype(np.float32), np.concatenate(b)))
            self._stack = steps
        return self._stack

    def _weights_changed(self) -> None:
        """Forget what was derived from the weights: the Monte Carlo's environment table or memo, the plain
        steps of :meth:`_stacked`."""
        self.features.invalidate()
        self._stack = None

    # -- weights -----------------------------------------------------------------------------------------
    def vector(self) -> np.ndarray:
        """Every weight and scale in one float64 vector (the tuple space and channels move it as one array)."""
        parts = [np.array([self.mean, self.std]), self.w]
        parts += [p.data.astype(np.float64).ravel() for net in self.nets for p in net.parameters()]
        return np.concatenate(parts)

    def load_vector(self, vector: np.ndarray) -> "Surrogate":
        """The weights of :meth:`vector` (from a surrogate of the same shape), for any cell size."""
        vector = checks.array("vector", np.asarray(vector), ndim=1, finite=True)
        params = [p for net in self.nets for p in net.parameters()]
        expected = 2 + self.n_inputs + sum(p.size for p in params)
        if vector.size != expected:
            raise ValueError(f"vector: expected {expected} numbers for this surrogate (hidden={self.hidden}, "
                             f"ensemble={self.size}), got {vector.size}")
        self.mean, self.std = float(vector[0]), float(vector[1])
        self.w, at = vector[2:2 + self.n_inputs].copy(), 2 + self.n_inputs
        for p in params:
            p.data[...] = vector[at:at + p.size].reshape(p.shape)
            at += p.size
        self._weights_changed()
        return self
