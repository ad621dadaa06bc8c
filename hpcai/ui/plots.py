"""Pictures for the panel, rendered to PNG bytes (an ``ipywidgets.Image`` shows them; no ipympl, no pyplot)."""
from __future__ import annotations

import os

import numpy as np

from ..train.plot import new_figure, png_bytes


def smooth(values, window: int = 25) -> np.ndarray:
    """Running mean over at most ``window`` points (minibatch losses are noisy)."""
    v = np.asarray(values, float)
    if v.size < 3:
        return v
    w = int(min(window, max(1, v.size // 10)))
    c = np.cumsum(np.insert(v, 0, 0.0))
    out = np.empty_like(v)
    out[w - 1:] = (c[w:] - c[:-w]) / w
    out[:w - 1] = c[1:w] / np.arange(1, w)
    return out


def loss_png(snapshots: list[dict], width: float = 5.0, height: float = 2.6) -> bytes | None:
    """The training loss so far of each rank that reports one (smoothed, log scale), as PNG; None if no loss yet."""
    curves = [(rank, s) for rank, s in enumerate(snapshots) if s.get("losses")]
    if not curves:
        return None
    fig = new_figure(figsize=(width, height), layout="constrained")
    ax = fig.add_subplot()
    for rank, snap in curves:
        steps, losses = np.asarray(snap["steps"]), np.asarray(snap["losses"])
        ax.plot(steps, losses, lw=0.5, alpha=0.3, color=f"C{rank}")
        ax.plot(steps, smooth(losses), lw=1.5, color=f"C{rank}", label=f"rank {rank}" if len(curves) > 1 else None)
    if np.all(np.concatenate([np.asarray(s["losses"]) for _, s in curves]) > 0):
        ax.set_yscale("log")
    ax.set(xlabel="training step (this rank)", ylabel="training loss")
    if len(curves) > 1:
        ax.legend(fontsize="small")
    return png_bytes(fig, dpi=90)


def shown_path(path) -> str:
    """``path`` as a notebook user reads it: relative to the kernel's folder when inside it (where the file
    browser opens), else absolute."""
    full = os.path.abspath(os.fspath(path))
    here = os.getcwd()
    return os.path.relpath(full, here) if full.startswith(here + os.sep) else full
