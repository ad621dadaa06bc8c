"""Shallow-water model on the sphere: transform identities, Williamson case 2, Galewsky jet, bad input.

Figures measured on the 2-core dev machine (numpy), recorded in each test's docstring.
"""
import math

import numpy as np
import pytest
from scipy import ndimage, special

from hpcai.backend import to_host
from hpcai.sim import INITIAL_CONDITIONS, ShallowWater, SphericalHarmonics, error_norms
from hpcai.sim.shallow_water import (galewsky_balanced_height, galewsky_jet, leapfrog_limit,
                                     williamson2_fields)

DAY = 86400.0


def random_spectrum(sh, rng, xp):
    """A band-limited random spectrum (m = 0 coefficients real, as for a real field)."""
    s = (rng.standard_normal(sh.spectral_shape) + 1j * rng.standard_normal(sh.spectral_shape)) * sh._valid_host
    s[:, 0] = s[:, 0].real
    return xp.asarray(s)


# ----------------------------------------------------------------------------- transform
def test_transform_round_trip(xp, rng):
    """spec -> grid -> spec and grid -> spec -> grid to round-off (measured 3e-14 / 2e-15 relative at T42)."""
    sh = SphericalHarmonics(128, 64, xp=xp)
    spec = random_spectrum(sh, rng, xp)
    grid = sh.spec_to_grid(spec)
    assert grid.shape == (64, 128)
    back = sh.grid_to_spec(grid)
    assert float(abs(back - spec).max()) < 1e-12
    assert float(abs(sh.spec_to_grid(back) - grid).max() / abs(grid).max()) < 1e-13
    batch = sh.grid_to_spec(xp.stack([grid, 2 * grid]))  # leading axes are batched
    assert float(abs(batch[1] - 2 * back).max()) < 1e-12
    assert sh.lat[0] > 0 > sh.lat[-1] and np.isclose(np.sin(np.radians(sh.lat)), sh.mu).all()


@pytest.mark.parametrize("n,m", [(1, 0), (2, 1), (7, 3), (30, 0), (42, 17), (42, 42)])
def test_laplacian_of_spherical_harmonic(xp, n, m):
    """Analysis of scipy's Y_n^m gives one coefficient; div(grad Y) computed through the H_n^m quadrature
    equals -n(n+1)/a^2 Y to round-off (so P, H, weights and the eigenvalues agree). Round-off leaking into
    degree T is scaled by T(T+1)/a^2, hence the tolerance relative to the largest eigenvalue."""
    sh = SphericalHarmonics(128, 64, xp=xp)
    lat, lon = np.radians(sh.lat)[:, None], np.radians(sh.lon)[None, :]
    Y = special.sph_harm_y(n, m, np.pi / 2 - lat, lon).real  # orthonormal on the unit sphere
    spec = sh.grid_to_spec(xp.asarray(Y))
    idx = sh.index(n, m)
    expected = 1 / math.sqrt(2 * math.pi) if m == 0 else 1 / (2 * math.sqrt(2 * math.pi))
    assert abs(abs(complex(spec[idx])) - expected) < 1e-13
    assert complex(sh.to_triangle(spec)[m, n]) == complex(spec[idx])
    rest = to_host(spec).copy()
    rest[idx] = 0
    assert abs(rest).max() < 1e-13
    lap_via_vectors = sh.vrtdiv(*sh.gradient(spec))[1]
    lap, lap_max = -n * (n + 1) / sh.radius ** 2, sh.T * (sh.T + 1) / sh.radius ** 2
    assert float(abs(lap_via_vectors - lap * spec).max()) < 1e-13 * lap_max
    assert float(abs(sh.spec_to_grid(sh.laplacian(spec)) - lap * xp.asarray(Y)).max()) < 1e-13 * lap_max


def test_vrtdiv_uv_round_trip(xp, rng):
    """vorticity/divergence -> (u, v) -> vorticity/divergence to 1e-12, and solid-body rotation exactly."""
    sh = SphericalHarmonics(96, 48, xp=xp)
    vrt, div = random_spectrum(sh, rng, xp), random_spectrum(sh, rng, xp)
    vrt[sh.index(0, 0)] = div[sh.index(0, 0)] = 0  # no global mean for a curl or a divergence
    u, v = sh.uv(vrt, div)
    vrt2, div2 = sh.vrtdiv(u, v)
    assert float(abs(vrt2 - vrt).max() / abs(vrt).max()) < 1e-12
    assert float(abs(div2 - div).max() / abs(div).max()) < 1e-12
    u0, coslat = 40.0, xp.asarray(np.cos(np.radians(sh.lat)))[:, None]
    vrt, div = sh.vrtdiv(u0 * coslat * xp.ones((1, 96)), xp.zeros((48, 96)))
    assert abs(complex(vrt[sh.index(1, 0)]) - 2 * u0 / sh.radius * math.sqrt(2 / 3)) < 1e-18
    assert float(abs(div).max()) < 1e-20


# ----------------------------------------------------------------------------- Williamson case 2
@pytest.mark.parametrize("alpha", [0.0, math.pi / 4])
def test_williamson2_steady_to_round_off(xp, alpha):
    """Williamson et al. (1992) case 2 after 5 days at T42 (128x64), dt = 1800 s.

    Measured without diffusion: l1 = 1.1e-15, l2 = 1.2e-15, linf = 6.1e-15 (alpha = 0) and
    l1 = 9.6e-16, l2 = 1.1e-15, linf = 2.2e-15 (alpha = pi/4): the steady state is a degree-2 field, so
    the spectral tendencies vanish to round-off and time truncation does not enter. With the default
    nabla^8 (3 h) filter the n = 2 mode is damped slightly: l2 = 8.8e-10 for both angles.
    """
    model = ShallowWater(128, 64, diffusion=None, xp=xp).initial_condition("williamson2", alpha=alpha)
    hist = model.run(5)
    assert hist.dt == 1800 and hist.time[-1] == 5 * DAY
    h_true = williamson2_fields(model.lat, model.lon, alpha)[2]
    norms = error_norms(model, hist.h[-1], h_true)
    assert norms["l1"] < 1e-13 and norms["l2"] < 1e-13 and norms["linf"] < 1e-13, norms
    assert abs(hist.mass[-1] / hist.mass[0] - 1) < 1e-13
    filtered = ShallowWater(128, 64, xp=xp).initial_condition("williamson2", alpha=alpha)
    norms = error_norms(filtered, filtered.run(5).h[-1], h_true)
    assert 1e-11 < norms["l2"] < 1e-8, norms  # the filter acts, and only slightly


# ----------------------------------------------------------------------------- Galewsky
def test_galewsky_balanced_height():
    """Quadrature balance (Galewsky et al. 2004, eq. 3): h0 = 10158.186 m south of the jet and 9071.208 m
    at the north pole (SCIENCE.md: 10158.19, 9071.21); the model's spectral balance at T85 agrees with it
    to 2.7 mm (0.18 m at T42, where the jet itself is truncated by 0.18 m/s)."""
    h, h0 = galewsky_balanced_height(np.radians([-90.0, 0.0, 20.0, 90.0]))
    assert abs(h0 - 10158.19) < 0.5 and abs(h[0] - h0) < 1e-9 and abs(h[2] - h0) < 1e-9
    assert abs(h[3] - 9071.21) < 0.5
    mu, w = np.polynomial.legendre.leggauss(400)  # area mean of the profile is the 10 km asked for
    assert abs(0.5 * galewsky_balanced_height(np.arcsin(mu))[0] @ w - 1e4) < 1e-6
    model = ShallowWater(256, 128).initial_condition("galewsky", perturbation=False)
    h_model = to_host(model.fields()["h"])
    h_quad = galewsky_balanced_height(np.radians(model.lat))[0]
    assert abs(h_model - h_quad[:, None]).max() < 0.01
    assert abs(model.sh.integrate(h_model) / (4 * math.pi * model.radius ** 2) - 1e4) < 1e-8


def test_galewsky_jet_without_bump_stays_steady(xp):
    """Unperturbed jet, 5 days at T42 (dt = 1200 s), no diffusion: max |du| = 5.4e-14 m/s, max |v| = 9e-15
    m/s, max |dh| = 3.6e-12 m (T85: 2.5e-13 m/s). With the default nabla^8 (3 h) filter the truncated jet's
    tail is damped instead: max |du| = 0.10 m/s at T85 and 4.1 m/s at T42 after 5 days."""
    model = ShallowWater(128, 64, diffusion=None, xp=xp).initial_condition("galewsky", perturbation=False)
    hist = model.run(5, output_hours=24)
    assert len(hist.time) == 6
    assert abs(hist.u[-1] - hist.u[0]).max() < 1e-10
    assert abs(hist.v).max() < 1e-10
    assert abs(hist.h[-1] - hist.h[0]).max() < 1e-8
    jet = galewsky_jet(np.radians(model.lat))[:, None]
    assert abs(hist.u[0] - jet).max() < 0.25  # the T42 truncation of the jet
    # The paper's quadrature-balanced height is not quite the discrete balance: 4.8e-4 m/s drift at T42.
    model.initial_condition("galewsky", perturbation=False, balance="quadrature")
    hist = model.run(5)
    assert 1e-6 < abs(hist.u[-1] - hist.u[0]).max() < 2e-3


def _pieces(mask) -> int:
    """Connected regions of a boolean lat-lon mask, periodic in longitude."""
    lab, n = ndimage.label(mask)
    parent = list(range(n + 1))

    def root(a):
        while parent[a] != a:
            a = parent[a]
        return a
    for a, b in zip(lab[:, 0], lab[:, -1]):
        if a and b:
            parent[root(a)] = root(b)
    return len({root(i) for i in range(1, n + 1)})


def test_galewsky_rollup_t85(xp, tmp_path):
    """Galewsky et al. (2004) at T85 (256x128), 6 days, default dt (720 s) and nabla^8 filter.

    Measured: non-zonal vorticity rms 1.6e-7 (day 1) -> 2.2e-5 1/s (day 6); max |zeta| 1.12e-4 -> 1.33e-4;
    the zeta < -6e-5 strip is one ring at day 0 and 13 pieces at day 6; mass change 2e-16 (relative);
    energy -7.0e-6 (relative, diffusion). The figure is saved under tmp_path.
    """
    model = ShallowWater(256, 128, xp=xp).initial_condition("galewsky")
    hist = model.run(6, output_hours=24)
    z = hist.vorticity
    nonzonal = np.sqrt(((z - z.mean(axis=2, keepdims=True)) ** 2).mean(axis=(1, 2)))
    assert nonzonal[0] < 1e-15  # the bump is in h only: vorticity starts exactly zonal
    assert nonzonal[6] > 50 * nonzonal[1] and nonzonal[6] > 1e-5
    assert abs(z[6]).max() > 1.1 * abs(z[0]).max()
    assert _pieces(z[0] < -6e-5) == 1 and _pieces(z[6] < -6e-5) >= 5
    assert np.all(abs(hist.mass / hist.mass[0] - 1) < 1e-12)
    energy = hist.energy / hist.energy[0] - 1
    assert np.all(np.diff(energy) < 1e-12) and -1e-4 < energy[-1] < 0
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(10, 3.5))
    c = ax.contourf(hist.lon, hist.lat, z[6], levels=np.linspace(-1.6e-4, 1.6e-4, 33), cmap="RdBu_r",
                    extend="both")
    ax.set(ylim=(0, 90), xlabel="longitude (deg)", ylabel="latitude (deg)",
           title="Galewsky et al. (2004) relative vorticity, day 6, T85")
    fig.colorbar(c, label="1/s")
    path = tmp_path / "galewsky_vorticity_day6.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    assert path.stat().st_size > 10_000


@pytest.mark.parametrize("name", sorted(INITIAL_CONDITIONS))
def test_every_initial_condition_runs(xp, name):
    """Each registered initial condition gives a finite state that runs a day at T42 conserving mass."""
    model = ShallowWater(128, 64, xp=xp).initial_condition(name)
    hist = model.run(1, output_hours=3)
    assert np.allclose(hist.days, np.arange(9) / 8) and np.isfinite(hist.h).all()
    assert hist.h.shape == (9, 64, 128) and hist.lat.shape == (64,) and hist.lon.shape == (128,)
    assert np.all(abs(hist.mass / hist.mass[0] - 1) < 1e-13) and 1 < hist.max_wind.max() < 100
    assert model.diagnostics()["time"] == 86400.0
    assert np.allclose(to_host(model.vorticity()), hist.vorticity[-1])


# ----------------------------------------------------------------------------- bad input
def test_registry_and_unknown_initial_condition():
    assert {"williamson2", "galewsky"} <= set(INITIAL_CONDITIONS)
    model = ShallowWater(64, 32)
    with pytest.raises(ValueError, match="unknown name 'rossby'.*galewsky.*williamson2"):
        model.initial_condition("rossby")
    with pytest.raises(RuntimeError, match="initial_condition"):
        model.run(1)


@pytest.mark.parametrize("kwargs,match", [
    (dict(nlon=128, nlat=63), "nlat"), (dict(nlon=127, nlat=64), "nlon"),
    (dict(nlon=128, nlat=64, truncation=50), r"truncation: T50 is too high.*truncation <= 42"),
    (dict(nlon=128, nlat=40, truncation=42), "truncation"), (dict(nlon=128, nlat=64, dt=-5), "dt"),
    (dict(nlon=128, nlat=64, diffusion=("hyper", 3, 3.0)), "diffusion"),
    (dict(omega="7e-5"), "omega: expected a finite number, got '7e-5'"),
    (dict(omega=float("nan")), "omega: expected a finite number, got nan"),
    (dict(omega=True), "omega: expected a finite number, got True"),
    (dict(williams=float("inf")), "williams: expected a finite number, got inf"),
    (dict(williams="1"), "williams: expected a finite number, got '1'"),
    (dict(williams=0.2), r"williams: the filter \(robert=0.05, williams=0.2\) amplifies"),
    (dict(radius=float("inf")), "radius: expected a finite positive number"),
])
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ShallowWater(**kwargs)


@pytest.mark.parametrize("args,match", [
    ((np.zeros((32, 64)), np.zeros((31, 64)), 1e4), r"v: expected finite real numbers broadcastable to \(nlat, nlon\) "
                                                    r"= \(32, 64\), got shape \(31, 64\)"),
    ((np.zeros((2, 32, 64)), 0.0, 1e4), r"u: .* got shape \(2, 32, 64\)"),
    ((0.0, 0.0, np.ones(32)), r"h: .* got shape \(32,\)"),  # a (nlat,) vector would broadcast along longitude
    ((0.0, 0.0, "deep"), r"h: expected finite real numbers .* on numpy, got str"),
    ((0.0, 0.0, None), r"h: .* got NoneType"),
    (([[1.0, 2.0], [3.0]], 0.0, 1e4), r"u: .* got list"),
    ((np.zeros((32, 64), complex), 0.0, 1e4), r"u: .* got numpy.ndarray complex128"),
    ((np.full((32, 64), np.nan), 0.0, 1e4), r"u: expected finite .* got 2048 NaN or infinite values"),
    ((0.0, np.inf, 1e4), r"v: expected finite .* got 1 NaN or infinite values"),
])
def test_set_state_names_the_bad_argument(args, match):
    model = ShallowWater(64, 32)
    with pytest.raises(ValueError, match=match):
        model.set_state(*args)
    assert model._now is None  # nothing half-set
    model.set_state(np.cos(np.radians(model.lat))[:, None] * 20.0, 0, 1e4)  # a zonal column and numbers broadcast
    assert abs(model.max_wind() - 20.0) < 0.1
    with pytest.raises(ValueError, match=r"h: .* got 1 NaN"):
        model.add_height(np.where(np.arange(64) == 3, np.nan, 0.0))
    with pytest.raises(ValueError, match="mean_depth: expected a finite positive number, got -1"):
        model.balance_height(-1)


def test_bad_run_arguments():
    model = ShallowWater(128, 64).initial_condition("williamson2")
    for days in (-1, float("nan"), "2"):
        with pytest.raises(ValueError, match="days"):
            model.run(days)
    with pytest.raises(ValueError, match="output_hours"):
        model.run(1, output_hours=0.7)  # not a multiple of the 1800 s step
    with pytest.raises(ValueError, match="output_every"):
        model.run(1, output_every=0)


def test_unstable_dt_is_refused_with_the_limit():
    """The limit is C / (|v|max sqrt(T(T+1))/a + 2 Omega), C = 0.9 x filtered-leapfrog bound (0.976)."""
    assert abs(leapfrog_limit(0.0) - 1) < 1e-6 and 0.97 < leapfrog_limit(0.05) < 0.98
    model = ShallowWater(256, 128, dt=900).initial_condition("galewsky")
    limit = model.stable_dt()
    assert 650 < limit < 800
    with pytest.raises(ValueError, match=rf"dt: 900 s exceeds the stable limit {limit:.0f} s for T85 with "
                                         rf"max wind 79 m/s; use dt <= {math.floor(limit)}"):
        model.run(1)


def test_blow_up_raises_not_nan():
    """A 4 h step with the check off: the jet blows up within days; the error names the model time."""
    model = ShallowWater(128, 64, dt=14400, diffusion=None).initial_condition("galewsky")
    with pytest.raises(FloatingPointError, match=r"blew up at model time \d+\.\d+ days"):
        model.run(30, check_stability=False)
    assert model.time < 30 * DAY
