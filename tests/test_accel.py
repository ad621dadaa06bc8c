"""The optional numba accelerator: switched off on request, and equal to numpy where it runs."""
import numpy as np
import pytest

from hpcai import accel


@accel.jit
def _scaled_sum(x, a):
    s = 0.0
    for v in x:
        s += a * v
    return s


def test_disabled_switches_every_kernel_off_and_back():
    before = _scaled_sum.available
    assert before == accel.numba_installed() or not before
    with accel.disabled():
        assert not _scaled_sum.available
        with accel.disabled():
            assert not _scaled_sum.available
        assert not _scaled_sum.available
    assert _scaled_sum.available == before


def test_environment_switch(monkeypatch):
    monkeypatch.setenv("HPCAI_NUMBA", "0")
    assert not _scaled_sum.available


def test_compiled_kernel_matches_numpy():
    if not _scaled_sum.available:
        pytest.skip("numba is not installed (extra 'fast')")
    x = np.random.default_rng(0).standard_normal(1000)
    assert _scaled_sum(x, 2.0) == pytest.approx(2.0 * x.sum(), rel=1e-12)
    assert _scaled_sum.__name__ == "_scaled_sum"
