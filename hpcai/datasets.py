"""Small data sets for tests, demos and notebooks: real handwritten digits and synthetic generators.

:func:`digits` is scikit-learn's bundled ``load_digits`` (1797 8x8 images, no download) with a fixed,
stratified train/test split per seed. The generators draw from an explicit seeded numpy Generator, so
every call with the same arguments returns the same arrays. Inputs are float32, class labels int64.
"""
from __future__ import annotations

import numpy as np


def _sklearn_digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("digits() needs scikit-learn: pip install 'hpcai[dev]' (or scikit-learn)") from None
    return load_digits()


def stratified_split(y, test_fraction: float = 0.2, seed: int = 0):
    """(train_index, test_index): each class split in the same proportion, shuffled by ``seed``."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction: expected a number in (0, 1), got {test_fraction!r}")
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = int(round(test_fraction * len(idx)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def digits(test_fraction: float = 0.2, seed: int = 0, flat: bool = False):
    """Handwritten digits 0-9 as ``(x_train, y_train), (x_test, y_test)``.

    x: float32 in [0, 1], shape (N, 1, 8, 8) (channels first, for Conv2d) or (N, 64) with ``flat``;
    y: int64 class indices. The split is stratified by class and fixed by ``seed``.
    """
    bunch = _sklearn_digits()
    x = (bunch.images / 16.0).astype(np.float32)  # pixel values are 0..16
    x = x.reshape(len(x), 64) if flat else x[:, None]
    y = bunch.target.astype(np.int64)
    train, test = stratified_split(y, test_fraction, seed)
    return (x[train], y[train]), (x[test], y[test])


def spirals(n: int = 600, classes: int = 3, noise: float = 0.2, turns: float = 1.5, seed: int = 0):
    """Interleaved 2-d spiral arms, one per class: (x float32 (n, 2), y int64 (n,)); not linearly separable."""
    if n < classes or classes < 2:
        raise ValueError(f"spirals: need classes >= 2 and n >= classes, got n={n}, classes={classes}")
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    r = rng.uniform(0.05, 1.0, n)
    theta = 2 * np.pi * (turns * r + y / classes) + noise * rng.standard_normal(n)
    x = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
    order = rng.permutation(n)
    return x[order].astype(np.float32), y[order].astype(np.int64)


def blobs(n: int = 600, classes: int = 4, dim: int = 2, spread: float = 0.5, seed: int = 0):
    """Gaussian clusters around random centres in [-3, 3]^dim: (x float32 (n, dim), y int64 (n,))."""
    if n < classes or classes < 1 or dim < 1:
        raise ValueError(f"blobs: need classes >= 1, dim >= 1 and n >= classes, got n={n}, classes={classes}, "
                         f"dim={dim}")
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-3, 3, (classes, dim))
    y = rng.permutation(np.arange(n) % classes)
    x = centres[y] + spread * rng.standard_normal((n, dim))
    return x.astype(np.float32), y.astype(np.int64)


def smooth_regression(n: int = 512, dim: int = 2, noise: float = 0.05, seed: int = 0):
    """y = sin(pi x_1) cos(pi x_2 / 2) + 0.5 * mean(x) + noise on x in [-1, 1]^dim: x (n, dim), y (n, 1), float32."""
    if dim < 1 or n < 1:
        raise ValueError(f"smooth_regression: need n >= 1 and dim >= 1, got n={n}, dim={dim}")
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, dim))
    y = np.sin(np.pi * x[:, 0]) * (np.cos(np.pi * x[:, 1] / 2) if dim > 1 else 1.0) + 0.5 * x.mean(axis=1)
    y = y + noise * rng.standard_normal(n)
    return x.astype(np.float32), y[:, None].astype(np.float32)


__all__ = ["blobs", "digits", "smooth_regression", "spirals", "stratified_split"]
