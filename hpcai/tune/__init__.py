"""Hyperparameter search with Optuna, each trial an MPI job on a group of engines (``pip install 'hpcai[tune]'``).

:class:`Tuner` holds the study in this process (a journal file, so it resumes) and runs trials side by side on
groups of ipyparallel engines, each group an MPI sub-communicator; pruning comes from the applications' own
progress reports; a trial whose engines die fails, is retried once, and the study goes on. The search space
comes from an application's Config fields (:func:`search_space`) or is given; ``hpcai tune APP`` is the
command line; :class:`hpcai.ui.tune_view.TuneView` shows a study live in a notebook.
"""
from .space import Categorical, Float, Int, parse_param, search_space
from .study import PRUNERS, SAMPLERS, open_study
from .trial import TrialContext, TrialPruned
from .tuner import PLOTS, Tuner

__all__ = [
           "PLOTS",
           "PRUNERS",
           "SAMPLERS",
           "Categorical",
           "Float",
           "Int",
           "TrialContext",
           "TrialPruned",
           "Tuner",
           "open_study",
           "parse_param",
           "search_space",
]
