"""Figures for applications, under the names they import: :func:`hpcai.train.plot.new_figure` and
:func:`hpcai.train.plot.save_png` (``save``), where every hpcai figure helper lives."""
from ..train.plot import new_figure, save_png as save

__all__ = ["new_figure", "save"]
