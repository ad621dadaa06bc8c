"""Figures of the climate SR application: the field at the last held-out step, and error over time."""
from __future__ import annotations

import os

import numpy as np

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


def save_figures(result, folder, field: str = "vorticity", units: str = "1/s") -> dict:
    """Write both figures as PNG into ``folder``; returns {name: path}."""
    paths = {}
    for name, make in (("fields", lambda r: field_panels(r, field, units)), ("errors", error_over_time)):
        paths[name] = os.path.join(folder, f"{name}.png")
        save_png(make(result), paths[name])
    return paths
