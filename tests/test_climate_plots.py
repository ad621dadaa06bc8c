"""Climate figures on synthetic fields: vorticity ticks in 10⁻⁵ s⁻¹, northern-hemisphere maps, kinetic-energy
spectra (a single harmonic peaks at its degree; Parseval against the winds), clean log axes, titled panels, and
the animation's GIF. A few seconds."""
import numpy as np
import pytest

pytest.importorskip("matplotlib")

from hpcai.apps import climate_plots as cp  # noqa: E402
from hpcai.sim.spharm import SphericalHarmonics  # noqa: E402

SH = SphericalHarmonics(64, 32)  # T21


def _jet(amplitude=1.2e-4):
    """A zonal band of vorticity at 45°N with a wave-4 ripple, and a weaker band at 45°S."""
    lat, lon = np.meshgrid(np.radians(SH.lat), np.radians(SH.lon), indexing="ij")
    north = np.exp(-((lat - np.radians(45)) / 0.2) ** 2) * (1 + 0.3 * np.cos(4 * lon))
    return amplitude * (north - 0.5 * np.exp(-((lat + np.radians(45)) / 0.2) ** 2))


def _numbers(labels):
    return [float(t.get_text().replace("−", "-")) for t in labels if t.get_text()]


def _maps():
    v = _jet()
    return cp.hemisphere_maps({"original": v, "restored": 0.9 * v, "|restored − original|": np.abs(0.1 * v)},
                              SH.lat, SH.lon, error="|restored − original|", title="day 1.50")


def test_vorticity_colour_bars_read_in_units_of_1e_minus_5_per_second():
    fig = _maps()
    fig.canvas.draw()
    bars = {ax.get_xlabel() or ax.get_ylabel(): ax for ax in fig.axes if ax.name != "polar"}
    assert set(bars) == {"relative vorticity (10⁻⁵ s⁻¹)", "error (10⁻⁵ s⁻¹)"}
    field = bars["relative vorticity (10⁻⁵ s⁻¹)"]
    ticks = _numbers(field.get_xticklabels())
    # 1.2e-4 1/s with the ripple: about ±16 in 10⁻⁵ s⁻¹, labelled as such (no 0.0001, no 1e-5 offset)
    assert 8 <= max(abs(t) for t in ticks) <= 20 and len(ticks) >= 3, ticks
    assert field.xaxis.get_offset_text().get_text() == ""
    assert all("e" not in t.get_text() for t in field.get_xticklabels())
    error = bars["error (10⁻⁵ s⁻¹)"]
    assert 0.5 <= max(_numbers(error.get_yticklabels())) <= 2.0


def test_maps_show_the_northern_hemisphere_only():
    fig = _maps()
    polar = [ax for ax in fig.axes if ax.name == "polar"]
    assert [ax.get_title() for ax in polar] == ["original", "restored", "|restored − original|"]
    for ax in polar:
        assert ax.get_ylim() == (0.0, 90.0)  # radius = colatitude: pole to equator
        assert [t.get_text() for t in ax.get_yticklabels()] == ["60°N", "30°N"]
        mesh = ax.collections[0]
        assert mesh.get_array().shape == (16, 64)  # the 16 northern rows of 32
    # the southern band is not drawn: the map's values are the northern rows, pole first
    np.testing.assert_array_equal(polar[0].collections[0].get_array(), _jet()[:16] * 1e5)
    fig = cp.hemisphere_maps({"original": _jet()[::-1]}, SH.lat[::-1], SH.lon, lat_min=20)  # rows south to north
    ax = fig.axes[0]
    assert ax.get_ylim() == (0.0, 70.0)
    np.testing.assert_array_equal(ax.collections[0].get_array(), _jet()[SH.lat > 20] * 1e5)


def test_energy_spectrum_of_a_single_harmonic_peaks_at_its_degree():
    for n, m in ((1, 0), (5, 3), (12, 12), (20, 7)):
        spec = np.zeros(SH.spectral_shape, complex)
        spec[SH.index(n, m)] = 1e-5
        k, e = cp.energy_spectrum(SH.spec_to_grid(spec))
        assert np.argmax(e) == n and len(k) == SH.T + 1
        expected = SH.radius ** 2 / (4 * n * (n + 1)) * (2 if m else 1) * 1e-10
        np.testing.assert_allclose(e[n], expected, rtol=1e-10)
        assert np.delete(e, n).max() < 1e-12 * e[n]


def test_energy_spectrum_sums_to_the_mean_kinetic_energy_of_the_winds():
    vorticity = _jet()
    spec = SH.grid_to_spec(vorticity)
    spec[SH.index(0, 0)] = 0  # a global mean vorticity has no wind
    u, v = SH.uv(spec, np.zeros_like(spec))
    mean_ke = SH.integrate(0.5 * (u ** 2 + v ** 2)) / (4 * np.pi * SH.radius ** 2)
    _, e = cp.energy_spectrum(vorticity)
    np.testing.assert_allclose(e.sum(), mean_ke, rtol=1e-10)


def test_spectrum_figure_has_clean_log_axes_and_titles():
    v = _jet()
    fig = cp.spectrum_figure([("held out, day 1.50", v, 0.8 * v, 0.95 * v)])
    fig.canvas.draw()
    ax = fig.axes[0]
    assert ax.get_title() == "held out, day 1.50" and ax.get_ylabel() == "kinetic energy (m² s⁻²)"
    assert ax.get_xlabel() == "total wavenumber n"
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels[:3] == ["original", "compressed", "restored"] and "n⁻³" in labels
    visible = [t.get_text() for t, x in zip(ax.get_xticklabels(), ax.get_xticks()) if 1 <= x <= SH.T]
    assert visible == ["1", "2", "5", "10", "20"]  # plain wavenumbers, not 10⁰ 10¹ with labelled minor ticks
    _assert_clean(ax)


def _assert_clean(ax):
    """No labelled minor ticks, at most 8 labelled major ticks per log axis, none of them an offset."""
    for axis in (ax.xaxis, ax.yaxis):
        if axis.get_scale() != "log":
            continue
        assert not [t.get_text() for t in axis.get_minorticklabels() if t.get_text()]
        lo, hi = sorted(axis.get_view_interval())
        shown = [t for t, x in zip(axis.get_majorticklabels(), axis.get_majorticklocs())
                 if t.get_text() and lo * (1 - 1e-9) <= x <= hi * (1 + 1e-9)]
        assert 2 <= len(shown) <= 8, [t.get_text() for t in shown]
        assert axis.get_offset_text().get_text() == ""


def test_error_figure_has_titled_panels_and_clean_log_axes():
    # less than a decade on the left (where matplotlib labels every minor tick by default), many on the right
    fig = cp.errors_figure([1.25, 1.375, 1.5], [0.79, 0.8, 0.81], [0.03, 0.035, 0.04],
                           np.exp(-np.linspace(0, 9, 140)), ratio=111)
    fig.canvas.draw()
    errors, loss = fig.axes
    assert "×111" in errors.get_title() and loss.get_title() == "training loss: 140 iterations"
    for ax in (errors, loss):
        _assert_clean(ax)
    assert set(_numbers(errors.get_yticklabels())) & {0.05, 0.1, 0.2, 0.5}


def test_animation_gif_has_one_frame_per_step(tmp_path):
    from PIL import Image
    frames = np.stack([np.roll(_jet(), 4 * i, axis=1) for i in range(7)])
    anim = cp.animation(frames, SH.lat, SH.lon, np.arange(7) * 0.125, title="restored")
    path = cp.save_gif(anim, tmp_path / "vorticity.gif")
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames == 7
    assert [p.name for p in tmp_path.iterdir()] == ["vorticity.gif"]  # no temporary file left
    picks = cp._every(100)
    assert len(picks) <= cp.MAX_FRAMES and picks[0] == 0 and picks[-1] == 99
    ipython = pytest.importorskip("IPython.display")
    assert isinstance(cp.show(path), ipython.Image)


def test_bad_input_names_the_argument(tmp_path):
    with pytest.raises(ValueError, match="^values: expected shape"):
        cp.hemisphere_maps({"original": np.zeros((10, 10))}, SH.lat, SH.lon)
    with pytest.raises(ValueError, match="^lat_min: "):
        cp.hemisphere_maps({"original": _jet()}, SH.lat, SH.lon, lat_min=89.9)
    with pytest.raises(ValueError, match="^panels: "):
        cp.hemisphere_maps({}, SH.lat, SH.lon)
    with pytest.raises(ValueError, match="^frames: "):
        cp.animation(np.zeros((3, 32, 64)), SH.lat, SH.lon, [0.0, 1.0])
    anim = cp.animation(np.stack([_jet(), -_jet()]), SH.lat, SH.lon, [0.0, 1.0])
    with pytest.raises(ValueError, match="^path: expected a file name ending in .gif"):
        cp.save_gif(anim, tmp_path / "a.png")
    assert cp.save_gif(anim, tmp_path / "a.gif").endswith("a.gif")


def test_rate_distortion_figure_has_two_log_panels_and_leaves_out_unreached_ratios():
    curves = {"sz3": np.array([[10.0, 1e-3, 5e-4], [20.0, 4e-3, 2e-3], [40.0, 1e-2, 8e-3]]),
              "zfp": np.array([[12.0, 2e-3, 3e-3], [np.nan, np.nan, np.nan]]),  # a ratio ZFP cannot reach
              "hpcai": np.array([[20.0, 3e-3, 2.5e-3]])}
    fig = cp.rd_figure(curves, title="held out")
    l2, mx = fig.axes[:2]
    assert l2.get_xscale() == l2.get_yscale() == "log" and mx.get_ylabel() == "relative max error"
    lines = {line.get_label(): line for line in l2.get_lines()}
    assert set(lines) == {"SZ3", "ZFP (fixed accuracy)", "hpcai: codec + network + corrections"}
    assert len(lines["ZFP (fixed accuracy)"].get_xdata()) == 1
    np.testing.assert_array_equal(lines["SZ3"].get_ydata(), [1e-3, 4e-3, 1e-2])
