"""Figures for applications: matplotlib Figure objects (no pyplot state, safe in threads and on engines), saved
atomically as PNG."""
from __future__ import annotations

from .. import io


def new_figure(**kwargs):
    """A matplotlib Figure (``figsize``, ``layout``, ...), or an ImportError naming the extra to install."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("figures need matplotlib: pip install 'hpcai[plot]'") from None
    return Figure(**kwargs)


def save(fig, path, dpi: int = 110) -> str:
    """Write ``fig`` to ``path`` as PNG (temp file + rename); returns the path."""
    io.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    return str(path)
