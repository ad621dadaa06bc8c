"""Figures of the climate SR application, drawn as a climate paper would: northern-hemisphere polar maps of the
jet, vorticity in 10⁻⁵ s⁻¹, kinetic-energy spectra against total wavenumber, clean log axes, titled panels, and
an animation of the field over the run (a small GIF).

The figure functions take arrays and return a matplotlib Figure (no files, no pyplot), so they work on any
field: :func:`hemisphere_maps`, :func:`spectrum_figure`, :func:`errors_figure`, :func:`animation`. The
``result`` wrappers (:func:`field_panels`, :func:`error_over_time`, :func:`spectra`, :func:`generalisation`) read
a run's Result, and :func:`save_figures` writes them all. The polar maps are azimuthal equidistant about the
pole (radius = colatitude), done with matplotlib's polar axes: no map-projection package needed.
"""
from __future__ import annotations

import functools
import os

import numpy as np

from .. import io
from ..sim.spharm import EARTH_RADIUS, SphericalHarmonics
from ..train.plot import new_figure, save_png

# how each stored field is labelled: {field: (name, factor the values are multiplied by, unit after it)}
FIELD_LABELS = {"vorticity": ("relative vorticity", 1e5, "10⁻⁵ s⁻¹"), "h": ("height h", 1.0, "m")}
MAX_FRAMES = 48  # an animation longer than this shows every k-th step (and the last)


def field_label(field: str, units: str = "") -> tuple[str, float, str]:
    """(name, scale, unit text) of ``field``: plot ``values * scale`` under ``f"{name} ({unit text})"``."""
    return FIELD_LABELS.get(field, (field, 1.0, units))


def _axis_label(field: str, units: str) -> str:
    name, _, unit = field_label(field, units)
    return f"{name} ({unit})" if unit else name


# -- northern-hemisphere maps --------------------------------------------------------------------------
def _hemisphere(values, lat, lon, lat_min):
    """The rows north of ``lat_min``, pole first, with the cell edges of a polar mesh (theta, colatitude)."""
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    values = np.asarray(values, float)
    if lat.ndim != 1 or lon.ndim != 1 or values.shape[-2:] != (lat.size, lon.size):
        raise ValueError(f"values: expected shape (..., {lat.size}, {lon.size}) to match lat and lon, "
                         f"got {values.shape}")
    if not -90 <= lat_min < 90 or not (lat > lat_min).any():
        raise ValueError(f"lat_min: expected a latitude in [-90, 90) below the grid's northernmost "
                         f"{lat.max():.1f}, got {lat_min!r}")
    order = np.argsort(-lat)
    order = order[lat[order] > lat_min]
    colat = 90.0 - lat[order]
    r = np.concatenate([[0.0], (colat[1:] + colat[:-1]) / 2, [90.0 - lat_min]])
    dlon = 360.0 / lon.size
    theta = np.radians(np.concatenate([lon - dlon / 2, [lon[-1] + dlon / 2]]))
    return values[..., order, :], theta, r


def polar_map(ax, values, lat, lon, *, lat_min: float = 0.0, **mesh):
    """Draw ``values`` (nlat, nlon) north of ``lat_min`` on the polar Axes ``ax``, pole at the centre,
    0° longitude at the bottom and east anticlockwise (as seen from above the pole); returns the mesh."""
    shown, theta, r = _hemisphere(values, lat, lon, lat_min)
    artist = ax.pcolormesh(theta, r, shown, shading="flat", rasterized=True, **mesh)
    ax.set_theta_zero_location("S")
    ax.set_theta_direction(1)
    ax.set_ylim(0, 90.0 - lat_min)
    rings = [c for c in (30, 60, 90) if c < 90 - lat_min]
    ax.set_yticks(rings, [f"{90 - c}°N" for c in rings], fontsize=8, color="0.3")
    ax.set_rlabel_position(135)
    ax.set_xticks(np.radians([0, 90, 180, 270]), ["0°", "90°E", "180°", "90°W"], fontsize=8)
    ax.grid(color="0.4", alpha=0.35, lw=0.5)
    return artist


def hemisphere_maps(panels: dict, lat, lon, *, field: str = "vorticity", units: str = "1/s",
                    error: str | None = None, lat_min: float = 0.0, title: str | None = None):
    """Northern-hemisphere maps of ``panels`` ({title: (nlat, nlon) array}), two per row, on one symmetric
    colour scale in the field's plot units (vorticity in 10⁻⁵ s⁻¹); the panel named ``error`` gets its own
    sequential scale from 0. Returns the Figure."""
    if not isinstance(panels, dict) or not panels:
        raise ValueError(f"panels: expected a non-empty dict {{title: field}}, got {panels!r}")
    _, scale, _ = field_label(field, units)
    fields = {k: np.asarray(v, float) * scale for k, v in panels.items()}
    signed = [v for k, v in fields.items() if k != error]
    vmax = max(float(np.abs(v).max()) for v in signed) if signed else 1.0
    rows = (len(fields) + 1) // 2
    cols = min(2, len(fields))
    fig = new_figure(figsize=(4.1 * cols, 4.3 * rows + 0.6), layout="constrained")
    axes = [fig.add_subplot(rows, cols, i + 1, projection="polar") for i in range(len(fields))]
    label = _axis_label(field, units)
    meshes = {}
    for ax, (name, values) in zip(axes, fields.items()):
        if name == error:
            meshes[name] = polar_map(ax, values, lat, lon, lat_min=lat_min, cmap="magma_r", vmin=0,
                                     vmax=float(values.max()) or 1.0)
        else:
            meshes[name] = polar_map(ax, values, lat, lon, lat_min=lat_min, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        ax.set_title(name, fontsize=11, pad=12)
    signed_axes = [ax for ax, name in zip(axes, fields) if name != error]
    if signed_axes:  # one scale for the fields, below them; the error's own, beside its panel
        bar = fig.colorbar(meshes[next(n for n in fields if n != error)], ax=axes, location="bottom",
                           shrink=0.6, aspect=40, pad=0.02)
        _plain_colorbar(bar, label)
    if error is not None and error in fields:
        bar = fig.colorbar(meshes[error], ax=axes[list(fields).index(error)], location="right", shrink=0.8,
                           pad=0.06)
        unit = field_label(field, units)[2]
        _plain_colorbar(bar, f"error ({unit})" if unit else "error")
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def _plain_colorbar(bar, label: str) -> None:
    """Ticks as plain numbers (no offset, no exponent: the unit carries the power of ten) and the label."""
    from matplotlib import ticker
    bar.locator = ticker.MaxNLocator(7, symmetric=bar.vmin < 0 < bar.vmax)
    bar.formatter = ticker.ScalarFormatter(useOffset=False)
    bar.formatter.set_powerlimits((-99, 99))
    bar.update_ticks()
    bar.set_label(label, fontsize=10)


# -- spectra -------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _transform(nlon: int, nlat: int, radius: float) -> SphericalHarmonics:
    return SphericalHarmonics(nlon, nlat, radius=radius)


def degree_spectrum(fields):
    """(n, E(n)): the power of ``fields`` (..., nlat, nlon) per spherical-harmonic degree n = 0..T on their
    Gaussian grid, sum over m of |f_n^m|^2 (m > 0 twice: the real field's +-m), averaged over leading axes."""
    fields = np.asarray(fields, float)
    sh = _transform(fields.shape[-1], fields.shape[-2], EARTH_RADIUS)
    tri = np.abs(sh.to_triangle(sh.grid_to_spec(fields.reshape((-1,) + fields.shape[-2:])))) ** 2  # (k, m, n)
    tri[:, 1:] *= 2
    return np.arange(sh.T + 1), tri.sum(axis=1).mean(axis=0)


def energy_spectrum(vorticity, radius: float = EARTH_RADIUS):
    r"""(n, E(n)): kinetic energy per unit mass (m² s⁻²) of the non-divergent flow with relative vorticity
    ``vorticity`` (..., nlat, nlon) on its Gaussian grid, per total wavenumber n, averaged over the sphere
    and the leading axes: :math:`E(n) = \frac{a^2}{4n(n+1)}\sum_m c_m|\zeta_n^m|^2` (:math:`c_0 = 1`, else 2),
    so that :math:`\sum_n E(n)` is the area mean of :math:`(u^2+v^2)/2`: with the streamfunction
    :math:`\psi_n^m = -a^2\zeta_n^m/(n(n+1))`, :math:`\int|\nabla\psi|^2 dA` is a sum of
    :math:`n(n+1)|\psi_n^m|^2` over the harmonics (Green's identity), and a fully normalised harmonic has
    area mean square 1/2 (m = 0) or 1 (the real field's ±m)."""
    n, power = degree_spectrum(vorticity)
    factor = np.zeros(n.shape)
    factor[1:] = radius ** 2 / (4.0 * n[1:] * (n[1:] + 1.0))
    return n, power * factor


def spectrum_figure(cases: list, *, field: str = "vorticity", units: str = "1/s"):
    """Spectra of ``cases`` [(title, original, compressed, restored), ...] side by side: kinetic energy per total
    wavenumber for vorticity (power per degree for other fields), with the errors' spectra dotted and an
    n⁻³ reference slope. Returns the Figure."""
    energy = field == "vorticity"
    fig = new_figure(figsize=(5.2 * len(cases), 4.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(cases), sharey=True))
    for ax, (title, original, compressed, restored) in zip(axes, cases):
        spectrum = energy_spectrum if energy else degree_spectrum
        n, e0 = spectrum(original)
        for label, values, style in (("original", original, "k-"), ("compressed", compressed, "C0-"),
                                     ("restored", restored, "C1-"),
                                     ("compressed − original", np.asarray(compressed) - original, "C0:"),
                                     ("restored − original", np.asarray(restored) - original, "C1:")):
            _, e = spectrum(values)
            ax.loglog(n[1:], np.where(e[1:] > 0, e[1:], np.nan), style, lw=1.2, label=label)
        if energy:  # the enstrophy-cascade slope, through the original's spectrum at n = 10
            k = min(10, len(e0) - 1)
            ref = n[k // 2:].astype(float)
            ax.loglog(ref, e0[k] * (ref / k) ** -3.0, color="0.6", ls="--", lw=0.8, label="n⁻³")
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("total wavenumber n")
        ax.set_xlim(1, n[-1])
        top = float(e0[1:].max()) or 1.0
        ax.set_ylim(max(float(e0[1:].min()), top * 1e-10) * 1e-2, top * 5)
        clean_log_axes(ax)
    axes[0].set_ylabel("kinetic energy (m² s⁻²)" if energy else f"{field} power per degree ({units}²)")
    axes[0].legend(fontsize=8, frameon=False)
    return fig


# -- curves --------------------------------------------------------------------------------------------
def clean_log_axes(ax) -> None:
    """Log axes of ``ax`` with few, plain labels: decades as 10ⁿ over three decades or more, else 1-2-5 steps
    as plain numbers; minor ticks unlabelled. Call after the data are drawn (it reads the limits)."""
    from matplotlib import ticker
    for axis, limits in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        if axis.get_scale() != "log":
            continue
        lo, hi = sorted(abs(v) for v in limits)
        if lo > 0 and hi / lo < 1e3:
            axis.set_major_locator(ticker.LogLocator(10, subs=(1.0, 2.0, 5.0), numticks=8))
            axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        else:
            axis.set_major_locator(ticker.LogLocator(10, numticks=7))
            axis.set_major_formatter(ticker.LogFormatterMathtext())
        axis.set_minor_locator(ticker.LogLocator(10, subs=np.arange(2, 10) * 1.0, numticks=12))
        axis.set_minor_formatter(ticker.NullFormatter())


def errors_figure(held_out_days, l2_compressed, l2_restored, loss, *, ratio: float | None = None):
    """Two titled panels: the relative L2 error of the compressed and restored held-out steps against model
    day, and the training loss per iteration. Returns the Figure."""
    fig = new_figure(figsize=(10, 3.8), layout="constrained")
    ax, loss_ax = fig.subplots(1, 2)
    ax.semilogy(held_out_days, l2_compressed, "o-", label="compressed")
    ax.semilogy(held_out_days, l2_restored, "s-", label="restored")
    ax.set_xlabel("model day")
    ax.set_ylabel("relative L2 error")
    gain = float(np.mean(l2_compressed) / np.mean(l2_restored)) if len(l2_restored) else float("nan")
    ax.set_title("held-out steps" + (f", compression ×{ratio:.0f}" if ratio else "") + f": error {gain:.3g}× smaller"
                 " restored", fontsize=11)
    ax.legend(frameon=False)
    loss = np.asarray(loss, float)
    loss_ax.semilogy(np.arange(1, len(loss) + 1), loss, lw=0.8, color="C2")
    loss_ax.set_xlabel("training iteration")
    loss_ax.set_ylabel("loss (normalised MSE)")
    loss_ax.set_title(f"training loss: {len(loss)} iterations", fontsize=11)
    for a in (ax, loss_ax):
        a.grid(alpha=0.3, which="major")
        clean_log_axes(a)
    return fig


# -- animation -----------------------------------------------------------------------------------------
def animation(frames, lat, lon, days, *, field: str = "vorticity", units: str = "1/s", lat_min: float = 0.0,
              title: str = "", size: float = 4.0):
    """A matplotlib animation of ``frames`` (time, nlat, nlon) at model ``days`` on a northern-hemisphere map,
    one colour scale for all; :func:`save_gif` writes it, :func:`show` shows it in a notebook."""
    from matplotlib.animation import FuncAnimation
    frames, days = np.asarray(frames, float), np.asarray(days, float)
    if frames.ndim != 3 or len(days) != len(frames) or not len(frames):
        raise ValueError(f"frames: expected (time, nlat, nlon) with one day per frame, got shape {frames.shape} "
                         f"and {len(days)} days")
    name, scale, _ = field_label(field, units)
    values = frames * scale
    vmax = float(np.abs(values).max()) or 1.0
    fig = new_figure(figsize=(size, size + 0.7), layout="constrained")
    ax = fig.add_subplot(projection="polar")
    mesh = polar_map(ax, values[0], lat, lon, lat_min=lat_min, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
    _plain_colorbar(fig.colorbar(mesh, ax=ax, orientation="horizontal", shrink=0.8, pad=0.03),
                    _axis_label(field, units))
    heading = fig.suptitle(" ", fontsize=10)

    def draw(i):
        shown, _, _ = _hemisphere(values[i], lat, lon, lat_min)
        mesh.set_array(shown)
        heading.set_text(f"{title}{', ' if title else ''}{name}, day {days[i]:.2f}")
        return mesh, heading
    draw(0)
    fig.canvas.draw()
    fig.set_layout_engine("none")  # the layout of the first frame serves all: a third of the time per frame
    return FuncAnimation(fig, draw, frames=len(frames), blit=False, repeat=True)


def save_gif(anim, path, fps: float = 6.0, dpi: int = 80) -> str:
    """Write the animation ``anim`` to ``path`` as a GIF (Pillow, which matplotlib brings), atomically; its path."""
    from matplotlib.animation import PillowWriter
    if not str(path).endswith(".gif"):
        raise ValueError(f"path: expected a file name ending in .gif, got {path!r}")
    io.atomic_write(path, lambda tmp: anim.save(tmp, writer=PillowWriter(fps=fps), dpi=dpi))
    return os.fspath(path)


def show(anim_or_path):
    """For a notebook cell: a saved GIF (its path) as an IPython Image, or an animation as an HTML5 video
    where ffmpeg is installed (else as an inline GIF)."""
    from IPython.display import HTML, Image
    if isinstance(anim_or_path, (str, os.PathLike)):
        return Image(filename=os.fspath(anim_or_path))
    from matplotlib import animation as mpl_animation
    if mpl_animation.writers.is_available("ffmpeg"):
        return HTML(anim_or_path.to_html5_video())
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        path = save_gif(anim_or_path, os.path.join(folder, "animation.gif"))
        with open(path, "rb") as f:
            return Image(data=f.read(), format="gif")


def _every(count: int, limit: int = MAX_FRAMES) -> np.ndarray:
    """At most ``limit`` evenly spread indices of ``count`` frames, the last included."""
    step = max(1, -(-count // limit))
    return np.unique(np.append(np.arange(0, count, step), count - 1))


# -- a run's figures -----------------------------------------------------------------------------------
def field_panels(result, field: str = "vorticity", units: str = "1/s"):
    """Original, compressed, restored and |restored − original| at the last held-out step, northern hemisphere."""
    a, m = result.arrays, result.metrics
    panels = {"original": a["original"], f"compressed (×{m['compression_ratio']:.0f})": a["compressed"],
              "restored": a["restored"], "|restored − original|": np.abs(a["restored"] - a["original"])}
    return hemisphere_maps(panels, a["lat"], a["lon"], field=field, units=units, error="|restored − original|",
                           title=f"{field_label(field, units)[0]}, day {float(a['day']):.2f} (held out, never trained "
                                 f"on)\nrelative L2 error {m['l2_compressed']:.2g} → {m['l2_restored']:.2g} on all "
                                 "held-out steps")


def error_over_time(result):
    """Relative L2 error of the compressed and restored held-out steps, and the training loss per iteration."""
    a = result.arrays
    return errors_figure(a["held_out_days"], a["l2_compressed"], a["l2_restored"], a["loss"],
                         ratio=result.metrics["compression_ratio"])


def spectra(result, field: str = "vorticity", units: str = "1/s"):
    """Spectra of the original, compressed and restored fields and of their errors at the last held-out step
    (and at the other flow's last step, if the run had one)."""
    a = result.arrays
    cases = [(f"held out, day {float(a['day']):.2f}", a["original"], a["compressed"], a["restored"])]
    if "other_original" in a:
        cases.append(("another flow, never trained on", a["other_original"], a["other_compressed"],
                      a["other_restored"]))
    return spectrum_figure(cases, field=field, units=units)


def generalisation(result):
    """Held-out relative L2 error of compressed and restored steps (a later window), the other flow's, and
    SZ3 / ZFP at the same total bytes (data + weights) on the held-out steps."""
    a, m = result.arrays, result.metrics
    fig = new_figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    ax.semilogy(a["held_out_days"], a["l2_compressed"], "o-", label="compressed (held out)")
    ax.semilogy(a["held_out_days"], a["l2_restored"], "s-", label="restored (held out)")
    if np.isfinite(m.get("l2_other_restored", np.nan)):
        ax.axhline(m["l2_other_compressed"], color="C0", ls=":", label="compressed, other flow (mean)")
        ax.axhline(m["l2_other_restored"], color="C1", ls=":", label="restored, other flow (mean)")
    for i, peer in enumerate(("sz3", "zfp")):
        if np.isfinite(m.get(f"l2_{peer}", np.nan)) and m[f"l2_{peer}"] > 0:
            ax.axhline(m[f"l2_{peer}"], color=f"C{i + 2}", ls="--", label=f"{peer} at the same total bytes (mean)")
    ax.set_xlabel("model day")
    ax.set_ylabel("relative L2 error")
    if "compression_ratio_held_out" in m:
        ax.set_title(f"generalisation: ×{m['compression_ratio_held_out']:.1f} counting weights and corrections",
                     fontsize=11)
    else:
        ax.set_title(f"generalisation: ×{m['compression_ratio_with_weights']:.1f} counting the weights", fontsize=11)
    ax.legend(fontsize=7, frameon=False)
    ax.grid(alpha=0.3)
    clean_log_axes(ax)
    return fig


RD_LABELS = {"block": "block DCT alone", "sz3": "SZ3", "zfp": "ZFP (fixed accuracy)",
             "truncate": "global DCT truncation",
             "codec_alone": "this run's codec alone", "hpcai": "hpcai: codec + network + corrections"}


def rd_figure(curves: dict, *, title: str = ""):
    """Two panels, relative L2 and relative max error against the total compression ratio, one line per
    method: ``curves`` {name: array (points, 3) of (ratio, L2, max)}; NaN points (a codec that cannot reach a
    ratio) are left out. Lower right is better. Returns the Figure."""
    fig = new_figure(figsize=(10, 3.8), layout="constrained")
    axes = fig.subplots(1, 2)
    for i, (name, points) in enumerate(curves.items()):
        points = np.asarray(points, float).reshape(-1, 3)
        points = points[np.isfinite(points).all(axis=1)]
        if not len(points):
            continue
        points = points[np.argsort(points[:, 0])]
        style = dict(marker="*", ms=14, ls="none", color="k") if name == "hpcai" else dict(marker="o", ms=4)
        for ax, column in zip(axes, (1, 2)):
            ax.loglog(points[:, 0], points[:, column], label=RD_LABELS.get(name, name), **style)
    for ax, what in zip(axes, ("relative L2 error (latitude-weighted)", "relative max error")):
        ax.set_xlabel("compression ratio (all bytes stored)")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3, which="major")
        clean_log_axes(ax)
    axes[0].legend(fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def rate_distortion(result):
    """The run's rate-distortion figure on the held-out steps: the codecs alone around the run's total ratio,
    the run's codec alone and hpcai's restored steps (weights and corrections counted)."""
    a = result.arrays
    curves = {name[3:]: a[name] for name in a if name.startswith("rd_")}
    return rd_figure(curves, title="held-out steps (a later window): error against every byte stored")


def save_figures(result, folder, field: str = "vorticity", units: str = "1/s") -> dict:
    """Write the figures as PNG into ``folder``; returns {name: path}. With the run's data file
    (``result.files["data"]``) also the animation of the restored field over the run, ``<field>.gif``, put in
    ``result.files["animation"]``."""
    paths = {}
    for name, make in (("fields", lambda r: field_panels(r, field, units)), ("errors", error_over_time),
                       ("spectra", lambda r: spectra(r, field, units)), ("generalisation", generalisation),
                       ("rate_distortion", rate_distortion)):
        if name == "rate_distortion" and not any(k.startswith("rd_") for k in result.arrays):
            continue  # the unet pipeline measures no curve
        paths[name] = save_png(make(result), os.path.join(folder, f"{name}.png"))
    if result.files.get("data"):
        from .climate_store import read_compressed
        restored, _ = read_compressed(result.files["data"], restore=True)
        days = np.asarray(result.arrays["step_days"], float)
        keep = _every(len(restored))
        anim = animation(restored[keep], result.arrays["lat"], result.arrays["lon"], days[keep], field=field,
                         units=units, title="restored")
        result.files["animation"] = save_gif(anim, os.path.join(folder, f"{field}.gif"))
    return paths
