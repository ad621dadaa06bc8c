"""The spherical-harmonic transform against ducc0 (an independent implementation), when it is installed.

Mapping (see benchmarks/spharm.py): ducc0's orthonormal :math:`Y_l^m` with the Condon--Shortley phase, healpy
packing, give ``a_lm = sqrt(2 pi) (-1)^m f_l^m`` for scalars and, for the spin-1 pair (E, B) on the maps
``(-v, u)``, ``E_lm = -sqrt(2 pi) (-1)^m a delta_l^m / sqrt(l (l+1))`` (B likewise from vorticity).
Measured differences: 2e-15 to 8e-14 relative (T21 to T85), on all three Legendre paths (the compiled
recurrence that the host takes with numba, and the numpy table and factored paths, the reference).
"""
import contextlib

import numpy as np
import pytest

from hpcai import accel
from hpcai.backend import to_host
from hpcai.sim import SphericalHarmonics
from hpcai.sim import spharm, spharm_compiled
from hpcai.sim.spharm import legendre_functions

PATHS = {"compiled": None, "table": 0, "factored": 10 ** 6}  # numpy paths: factored_columns forcing each


def _path(sh, path, xp=np):
    """A context in which ``sh`` takes ``path``: the compiled recurrence (skipped without numba, or on cupy),
    or a numpy path with the compiled kernels switched off."""
    if path == "compiled":
        if xp is not np or not spharm_compiled.available():
            pytest.skip("the compiled path needs numba and host arrays")
        return contextlib.nullcontext()
    if path == "factored" and xp is not np:
        pytest.skip("the factored path is for the host (factored_columns is 0 with cupy)")
    sh.factored_columns = PATHS[path]
    return accel.disabled()


def _random_spectrum(sh, rng):
    s = (rng.standard_normal(sh.spectral_shape) + 1j * rng.standard_normal(sh.spectral_shape)) * sh._valid_host
    s[:, 0] = s[:, 0].real
    s[sh.index(0, 0)] = 0.0
    return s


def _ducc(sh):
    """ducc0's transforms on ``sh``'s grid and the coefficient maps between the two layouts."""
    sht = pytest.importorskip("ducc0").sht.experimental
    p, m, l = np.nonzero(sh._valid_host)
    n = sh._n_host[p, m, l]
    dst = m * (2 * sh.T + 1 - m) // 2 + n  # healpy packing
    scale = np.sqrt(2 * np.pi) * (-1.0) ** m
    vscale = np.where(n > 0, -scale * sh.radius / np.sqrt(np.maximum(n * (n + 1), 1)), 0.0)

    def pack(spec, f):
        alm = np.zeros((sh.T + 1) * (sh.T + 2) // 2, complex)
        alm[dst] = spec[p, m, l] * f
        return alm

    def unpack(alm, f):
        out = np.zeros(sh.spectral_shape, complex)
        out[p, m, l] = np.divide(alm[dst], f, out=np.zeros(len(dst), complex), where=f != 0)
        return out

    def synthesis(alm, spin):
        return sht.synthesis_2d(alm=alm, spin=spin, lmax=sh.T, geometry="GL", ntheta=sh.nlat, nphi=sh.nlon)

    def analysis(maps, spin):
        return sht.analysis_2d(map=maps, spin=spin, lmax=sh.T, geometry="GL")

    return pack, unpack, scale, vscale, synthesis, analysis


def _rel(a, b):
    a, b = to_host(a), to_host(b)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("nlon,nlat", [(64, 32), (128, 64), (256, 128)])  # T21 (odd), T42 (even), T85 (odd)
def test_scalar_transforms_match_ducc0(xp, rng, nlon, nlat, path):
    """Synthesis and analysis agree with ducc0 on every Legendre path (measured 2e-15 at T21, 1.5e-14 at T42,
    7e-14 at T85, relative)."""
    sh = SphericalHarmonics(nlon, nlat, xp=xp)
    with _path(sh, path, xp):
        _check_scalar_against_ducc0(sh, xp, rng)


def _check_scalar_against_ducc0(sh, xp, rng):
    nlat, nlon = sh.nlat, sh.nlon
    pack, unpack, scale, _, synthesis, analysis = _ducc(sh)
    spec = _random_spectrum(sh, rng)
    grid = synthesis(pack(spec, scale)[None], 0)[0]
    assert _rel(sh.spec_to_grid(xp.asarray(spec)), grid) < 1e-12
    assert _rel(sh.grid_to_spec(xp.asarray(grid)), spec) < 1e-12
    noise = rng.standard_normal((nlat, nlon))  # not band-limited: both apply the same quadrature
    assert _rel(sh.grid_to_spec(xp.asarray(noise)), unpack(analysis(noise[None], 0)[0], scale)) < 1e-12


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("nlon,nlat", [(64, 32), (128, 64), (256, 128)])
def test_vector_transforms_match_ducc0(xp, rng, nlon, nlat, path):
    """Winds from vorticity/divergence and back agree with ducc0's spin-1 transforms on every Legendre path
    (measured 3e-15 at T21, 3e-14 at T42, 8e-14 at T85, relative)."""
    sh = SphericalHarmonics(nlon, nlat, xp=xp)
    with _path(sh, path, xp):
        _check_vector_against_ducc0(sh, xp, rng)


def _check_vector_against_ducc0(sh, xp, rng):
    pack, unpack, _, vscale, synthesis, analysis = _ducc(sh)
    vrt, div = _random_spectrum(sh, rng) * 1e-5, _random_spectrum(sh, rng) * 1e-5
    theta, phi = synthesis(np.stack([pack(div, vscale), pack(vrt, vscale)]), 1)
    u, v = sh.uv(xp.asarray(vrt), xp.asarray(div))
    assert _rel(u, phi) < 1e-12 and _rel(v, -theta) < 1e-12
    E, B = analysis(np.stack([-to_host(v), to_host(u)]), 1)
    vrt2, div2 = sh.vrtdiv(u, v)
    assert _rel(vrt2, unpack(B, vscale)) < 1e-12 and _rel(div2, unpack(E, vscale)) < 1e-12
    assert _rel(vrt2, vrt) < 1e-12 and _rel(div2, div) < 1e-12


@pytest.mark.parametrize("path", PATHS)
def test_batched_fields_match_one_at_a_time(rng, path):
    """Several fields per call (scalars, and wind pairs for the vector transforms) give the single-field
    results to round-off on one Legendre path (the GEMMs differ only in their number of columns, the
    compiled sums not at all; measured 4e-16 relative)."""
    sh = SphericalHarmonics(128, 64)
    with _path(sh, path):
        _check_batched(sh, rng)


def _check_batched(sh, rng):
    grids = rng.standard_normal((3, 64, 128))
    batch = sh.grid_to_spec(grids)
    for i in range(3):
        assert _rel(batch[i], sh.grid_to_spec(grids[i])) < 1e-14
    assert _rel(sh.spec_to_grid(batch)[1], sh.spec_to_grid(batch[1])) < 1e-14
    u, v = grids[:2], grids[1:]
    vrt, div = sh.vrtdiv(u, v)
    assert vrt.shape == div.shape == (2,) + sh.spectral_shape
    ub, vb = sh.uv(vrt, div)
    assert ub.shape == vb.shape == (2, 64, 128)
    for i in range(2):
        one = sh.vrtdiv(u[i], v[i])
        assert _rel(vrt[i], one[0]) < 1e-14 and _rel(div[i], one[1]) < 1e-14
        one = sh.uv(vrt[i], div[i])
        assert _rel(ub[i], one[0]) < 1e-14 and _rel(vb[i], one[1]) < 1e-14
    with pytest.raises(ValueError, match="u, v: expected the same shape"):
        sh.vrtdiv(u, v[0])


def test_path_choice_by_number_of_fields(rng):
    """Without the compiled path, one scalar or one wind field takes the factored path and more fields the
    table path; the two agree to round-off (measured 3e-14 relative at T42)."""
    sh = SphericalHarmonics(128, 64)
    grids = rng.standard_normal((3, 64, 128))
    if spharm_compiled.available():
        assert not hasattr(sh._fourier(grids), "ndim")  # the compiled path's own layout
    with accel.disabled():
        _check_numpy_path_choice(sh, grids)


def _check_numpy_path_choice(sh, grids):
    assert sh._fourier(grids[:1]).ndim == 5 and sh._fourier(grids[:2]).ndim == 5  # 2 and 4 real columns
    assert sh._fourier(grids).ndim == 4
    batch = sh.grid_to_spec(grids)  # table path
    assert _rel(sh.grid_to_spec(grids[0]), batch[0]) < 1e-13
    assert _rel(sh.spec_to_grid(batch[0]), sh.spec_to_grid(batch)[0]) < 1e-13
    u, v = sh.uv(*sh.vrtdiv(grids[0], grids[1]))
    ub, vb = sh.uv(*sh.vrtdiv(grids, grids[[1, 2, 0]]))
    assert _rel(u, ub[0]) < 1e-13 and _rel(v, vb[0]) < 1e-13


@pytest.mark.parametrize("nlon,nlat", [(64, 32), (128, 64), (512, 256)])
def test_factored_legendre_functions(nlon, nlat):
    """The factored path's bases and coefficients rebuild every table entry: sum_n' C_nn' P_n'^base equals
    P_n^m from the recurrence (measured 3e-15 at T21, 2e-14 at T42, 2e-13 at T170, relative to the largest |P|:
    at T170 both sides err by about 1e-12 near the pole at high degree, against an extended-precision
    recurrence), and the coefficients vanish above the diagonal (orthogonality) and are bounded by 1."""
    sh = SphericalHarmonics(nlon, nlat)
    J, T = nlat // 2, sh.T
    P = legendre_functions(T + 1, sh.mu[:J])[0]  # [m, n - m, j]
    worst = 0.0
    for b in sh._blocks:
        assert np.abs(b.C).max() <= 1 + 1e-12
        for p in (0, 1):
            for c in (0, 1):
                for i in range(1, b.ni):
                    m = b.a + c + 2 * i
                    if m > T:
                        continue
                    rows = P[m, p::2][:b.Lb1 - 1, b.j0:]
                    rebuilt = b.C[p, c, i - 1] @ b.B[p, c]
                    worst = max(worst, float(np.abs(rebuilt[:len(rows)] - rows).max()))
                    assert not np.triu(b.C[p, c, i - 1], i + 1).any()
    assert worst < 1e-12 * np.abs(P).max()


@pytest.mark.parametrize("nlon,nlat", [(64, 32), (128, 64), (512, 256)])  # T21, T42 (even), T170 (even)
def test_compiled_path_matches_table_path(rng, nlon, nlat):
    """The compiled recurrence gives the numpy table path's results: scalar and vector transforms, batched,
    the model's P-sums to degree T+1, H-sums and wind coefficients (measured 3e-15 to 4e-14 relative, T170
    included: the upward recurrence is as stable as the table's)."""
    sh = SphericalHarmonics(nlon, nlat)
    if not spharm_compiled.available():
        pytest.skip("numba is not installed")
    sh.factored_columns = 0
    spec = np.stack([_random_spectrum(sh, rng) for _ in range(3)])
    grids = rng.standard_normal((3, nlat, nlon))  # not band-limited: the same quadrature on both paths
    psi, chi = np.moveaxis(spec[:2], 0, -1), np.moveaxis(spec[1:], 0, -1)

    def run():
        S = sh._fourier(grids, rows=sh._rcos_half)
        Q = sh._analyse(S, sh.T + 1)
        return [sh.spec_to_grid(spec), sh.spec_to_grid(spec[0]), sh.grid_to_spec(grids), sh.grid_to_spec(grids[1]),
                *sh.uv(spec[0], spec[1]), *sh.uv(spec[:2], spec[1:]), *sh.vrtdiv(grids[0], grids[1]),
                *sh.vrtdiv(grids[:2], grids[1:]), Q, sh._h_sums(Q), sh._h_sums(Q[..., 1:3]),
                sh._wind_coefficients(psi, chi), sh._grids(sh._synthesise(sh._wind_coefficients(psi, chi)))]

    compiled = run()
    with accel.disabled():
        table = run()
    for a, b in zip(compiled, table):
        assert a.shape == b.shape and _rel(a, b) < 1e-12


def test_compiled_threads_give_identical_results(rng, monkeypatch):
    """Spread over 2 threads (order pairs claimed in chunks), the compiled sums are bit for bit those of one
    thread: every order is summed by one thread in the same order."""
    sh = SphericalHarmonics(128, 64)
    if not spharm_compiled.available():
        pytest.skip("numba is not installed")
    monkeypatch.setattr(spharm, "_PARALLEL", 0)  # threads even for this small grid
    spec, grids = _random_spectrum(sh, rng), rng.standard_normal((2, 64, 128))
    out = {}
    for threads in (1, 2):
        sh.threads = threads
        out[threads] = [sh.spec_to_grid(spec), sh.grid_to_spec(grids), *sh.vrtdiv(grids[0], grids[1]),
                        *sh.uv(spec, spec)]
    for a, b in zip(out[1], out[2]):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("bad", [0, -2, 1.5, "2", True])
def test_threads_must_be_a_positive_integer_or_none(bad):
    sh = SphericalHarmonics(16, 8)
    with pytest.raises(ValueError, match="threads: expected an integer >= 1"):
        sh.threads = bad
    sh.threads = None  # scipy.fft's workers again
    assert sh.threads is None


def test_compiled_matches_ducc0_at_T170(rng):
    """At T170 the compiled recurrence agrees with ducc0 (scalar and spin-1, both directions; measured
    2e-13 relative at most)."""
    sh = SphericalHarmonics(512, 256)
    with _path(sh, "compiled"):
        _check_scalar_against_ducc0(sh, np, rng)
        _check_vector_against_ducc0(sh, np, rng)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_run_covers_every_order_pair_once(threads):
    """The thread runner hands out every order pair exactly once (chunks claimed by whichever thread is free)
    and re-raises a kernel's error in the caller."""
    seen = []
    spharm_compiled.run(lambda i0, i1: seen.extend(range(i0, i1)), (), 171, threads)  # T170: 86 pairs
    assert sorted(seen) == list(range(86))

    def fails(i0, i1):
        raise ValueError("kernel failed")

    with pytest.raises(ValueError, match="kernel failed"):
        spharm_compiled.run(fails, (), 171, threads)
