"""The notebook front end: the control panel (ipywidgets). Nothing else in hpcai imports this package."""
from .panel import Panel

__all__ = ["Panel"]
