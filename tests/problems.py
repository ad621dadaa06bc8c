"""Small problems with known answers, shared by the serial and the MPI tests of asynchronous SGD."""
import numpy as np

from hpcai import nn


def mlp(seed=0):
    """The digits MLP 64-64-10."""
    return nn.Sequential(nn.Linear(64, 64, rng=seed), nn.ReLU(), nn.Linear(64, 10, rng=seed + 1))


def least_squares(n=512, d=8, noise=0.1, seed=0):
    """x, y (float32) and the exact least-squares optimum [w; b] (float64, from np.linalg.lstsq)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    y = (x @ rng.standard_normal(d) + 0.5 + noise * rng.standard_normal(n)).astype(np.float32)[:, None]
    optimum, *_ = np.linalg.lstsq(np.hstack([x, np.ones((n, 1), np.float32)]).astype(np.float64),
                                  y[:, 0].astype(np.float64), rcond=None)
    return x, y, optimum
