"""The spherical-harmonic transform against ducc0 (an independent implementation), when it is installed.

Mapping (see benchmarks/spharm.py): ducc0's orthonormal :math:`Y_l^m` with the Condon--Shortley phase, healpy
packing, give ``a_lm = sqrt(2 pi) (-1)^m f_l^m`` for scalars and, for the spin-1 pair (E, B) on the maps
``(-v, u)``, ``E_lm = -sqrt(2 pi) (-1)^m a delta_l^m / sqrt(l (l+1))`` (B likewise from vorticity).
Measured differences: 2e-15 to 8e-14 relative (T21 to T85), on both Legendre paths (the table, and the
factored path that single fields take on the host).
"""
import numpy as np
import pytest

from hpcai.backend import to_host
from hpcai.sim import SphericalHarmonics
from hpcai.sim.spharm import legendre_functions

PATHS = {"table": 0, "factored": 10 ** 6}  # SphericalHarmonics.factored_columns forcing each path


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
    """Synthesis and analysis agree with ducc0 on either Legendre path (measured 2e-15 at T21, 1.5e-14 at T42,
    7e-14 at T85, relative)."""
    if path == "factored" and xp is not np:
        pytest.skip("the factored path is for the host (factored_columns is 0 with cupy)")
    sh = SphericalHarmonics(nlon, nlat, xp=xp)
    sh.factored_columns = PATHS[path]
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
    """Winds from vorticity/divergence and back agree with ducc0's spin-1 transforms on either Legendre path
    (measured 3e-15 at T21, 3e-14 at T42, 8e-14 at T85, relative)."""
    if path == "factored" and xp is not np:
        pytest.skip("the factored path is for the host (factored_columns is 0 with cupy)")
    sh = SphericalHarmonics(nlon, nlat, xp=xp)
    sh.factored_columns = PATHS[path]
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
    results to round-off on one Legendre path (the GEMMs differ only in their number of columns; measured
    4e-16 relative)."""
    sh = SphericalHarmonics(128, 64)
    sh.factored_columns = PATHS[path]
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
    """By default one scalar or one wind field takes the factored path and more fields the table path; the
    two agree to round-off (measured 3e-14 relative at T42)."""
    sh = SphericalHarmonics(128, 64)
    grids = rng.standard_normal((3, 64, 128))
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
