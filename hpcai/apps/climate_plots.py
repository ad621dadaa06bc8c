"""Figures of the climate SR application: the field at the last held-out step, error over time, energy spectra,
and the generalisation test (a later window and another flow against SZ3 and ZFP at the same total bytes)."""
from __future__ import annotations

import os

import numpy as np

from ..sim.spharm import SphericalHarmonics
from ..train.plot import new_figure, save_png


def field_panels(result, field: str = "vorticity", units: str = "1/s"):
    """Original, compressed, restored and |restored - original| on the lat-lon grid (a matplotlib Figure)."""
    a = result.arrays
    fig = new_figure(figsize=(12, 6.5), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True, sharey=True)
    extent = (float(a["lon"][0]), float(a["lon"][-1]), float(a["lat"][-1]), float(a["lat"][0]))
    vmax = float(np.abs(a["original"]).max())
    error = np.abs(a["restored"] - a["original"])
    panels = [("original", a["original"]), ("compressed", a["compressed"]), ("restored", a["restored"]),
              ("|restored - original|", error)]
    for ax, (title, values) in zip(axes.flat, panels):
        is_error = values is error
        im = ax.imshow(values, extent=extent, aspect="auto", cmap="magma" if is_error else "RdBu_r",
                       vmin=0 if is_error else -vmax, vmax=float(values.max()) if is_error else vmax)
        ax.set_title(f"{field} {title}, day {a['day']:.2f}")
        fig.colorbar(im, ax=ax, shrink=0.85, label=units)
    for ax in axes[-1]:
        ax.set_xlabel("longitude (deg)")
    for ax in axes[:, 0]:
        ax.set_ylabel("latitude (deg)")
    m = result.metrics
    fig.suptitle(f"held out (never trained on); compression x{m['compression_ratio']:.0f}, relative L2 error "
                 f"{m['l2_compressed']:.2e} -> {m['l2_restored']:.2e} on all held-out steps")
    return fig


def error_over_time(result):
    """Latitude-weighted relative L2 error of compressed and restored fields on the held-out steps, and the
    training loss per iteration."""
    a = result.arrays
    fig = new_figure(figsize=(11, 4), layout="constrained")
    ax, loss_ax = fig.subplots(1, 2)
    ax.semilogy(a["held_out_days"], a["l2_compressed"], "o-", label="compressed")
    ax.semilogy(a["held_out_days"], a["l2_restored"], "s-", label="restored")
    ax.set_xlabel("model day")
    ax.set_ylabel("relative L2 error (held-out steps)")
    ax.set_title(f"compression x{result.metrics['compression_ratio']:.0f}: "
                 f"{result.metrics['l2_improvement']:.0f}x smaller error")
    ax.legend()
    loss_ax.semilogy(np.arange(1, len(a["loss"]) + 1), a["loss"], lw=0.8)
    loss_ax.set_xlabel("training iteration")
    loss_ax.set_ylabel("training loss (normalised MSE)")
    return fig


def degree_spectrum(fields):
    """(n, E(n)): the power of ``fields`` (..., nlat, nlon) per spherical-harmonic degree n = 0..T on their
    Gaussian grid, sum over m of |f_n^m|^2 (m > 0 twice: the real field's +-m), averaged over leading axes."""
    fields = np.asarray(fields, float)
    sh = SphericalHarmonics(fields.shape[-1], fields.shape[-2])
    tri = np.abs(sh.to_triangle(sh.grid_to_spec(fields.reshape((-1,) + fields.shape[-2:])))) ** 2  # (k, m, n)
    tri[:, 1:] *= 2
    return np.arange(sh.T + 1), tri.sum(axis=1).mean(axis=0)


def spectra(result, field: str = "vorticity"):
    """Energy spectra of the original, compressed and restored fields, and of their errors, at the last
    held-out step (and of the other flow's last step, if the run had one)."""
    a = result.arrays
    cases = [(f"held out, day {a['day']:.2f}", a["original"], a["compressed"], a["restored"])]
    if "other_original" in a:
        cases.append(("other flow", a["other_original"], a["other_compressed"], a["other_restored"]))
    fig = new_figure(figsize=(5.5 * len(cases), 4), layout="constrained")
    for ax, (title, original, compressed, restored) in zip(np.atleast_1d(fig.subplots(1, len(cases))), cases):
        for label, values, style in (("original", original, "k-"), ("compressed", compressed, "C0-"),
                                     ("restored", restored, "C1-"), ("compressed - original", compressed - original,
                                                                     "C0:"),
                                     ("restored - original", restored - original, "C1:")):
            n, e = degree_spectrum(values)
            ax.loglog(n[1:], np.maximum(e[1:], 1e-300), style, lw=1, label=label)
        ax.set_xlabel("spherical-harmonic degree n")
        ax.set_ylabel(f"{field} power per degree")
        ax.set_title(title)
        ax.legend(fontsize=7)
    return fig


def generalisation(result):
    """Held-out relative L2 error of compressed and restored steps (a later window), the other flow's, and
    SZ3 / ZFP at the same total bytes (data + weights) on the held-out steps."""
    a, m = result.arrays, result.metrics
    fig = new_figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    ax.semilogy(a["held_out_days"], a["l2_compressed"], "o-", label="compressed (held out)")
    ax.semilogy(a["held_out_days"], a["l2_restored"], "s-", label="restored (held out)")
    if not np.isnan(m.get("l2_other_restored", np.nan)):
        ax.axhline(m["l2_other_compressed"], color="C0", ls=":", label="compressed, other flow (mean)")
        ax.axhline(m["l2_other_restored"], color="C1", ls=":", label="restored, other flow (mean)")
    for i, peer in enumerate(("sz3", "zfp")):
        if m.get(f"l2_{peer}", 0) > 0:
            ax.axhline(m[f"l2_{peer}"], color=f"C{i + 2}", ls="--", label=f"{peer} at the same total bytes (mean)")
    ax.set_xlabel("model day")
    ax.set_ylabel("relative L2 error")
    ax.set_title(f"x{m['compression_ratio_with_weights']:.1f} counting the weights")
    ax.legend(fontsize=7)
    return fig


def save_figures(result, folder, field: str = "vorticity", units: str = "1/s") -> dict:
    """Write the figures as PNG into ``folder``; returns {name: path}."""
    paths = {}
    for name, make in (("fields", lambda r: field_panels(r, field, units)), ("errors", error_over_time),
                       ("spectra", lambda r: spectra(r, field)), ("generalisation", generalisation)):
        paths[name] = os.path.join(folder, f"{name}.png")
        save_png(make(result), paths[name])
    return paths
