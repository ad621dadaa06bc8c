"""Shared fixtures: every backend-aware test runs on numpy and, where a GPU is usable, on cupy."""
import numpy as np
import pytest

from hpcai import backend

BACKENDS = ["numpy", "cupy"]


@pytest.fixture(params=BACKENDS)
def xp(request):
    """The array module under test; the cupy case skips cleanly without a usable GPU."""
    if request.param == "cupy":
        if not backend.GPU_AVAILABLE:
            pytest.skip("no usable GPU (cupy absent or no CUDA device)")
        return backend._cupy
    return np


@pytest.fixture
def rng():
    """A seeded generator, so every random test is reproducible."""
    return np.random.default_rng(1234)
