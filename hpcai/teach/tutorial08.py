"""Exercises of notebook 08, hyperparameter search: log-uniform sampling and the median pruner."""
from __future__ import annotations

from . import Wrong, answer, judge

answer("08.log_prob", "how often a log-uniform learning rate falls below 1e-3", "274163a7b91287a6", sig=3,
       hint="sampled on a log scale, log(lr) is uniform on (log 1e-4, log 3e-2): the probability is a ratio of "
            "lengths on that scale.",
       mistakes={"4872c5067eb267b0": "that is for lr uniform on (1e-4, 3e-2): on a log scale the small rates "
                                     "get their fair share.",
                 "6c0a686fffc42125": "that is the probability of lr above 1e-3."},
       about="about 40 % of the trials try rates below 1e-3; uniform sampling would try only 3 %.")


@judge("08.prune", "the median pruner's rule",
       hint="with no finished trials at this step, never prune; otherwise prune when the value (a loss: lower "
            "is better) is worse than the median of the finished trials' values at the same step.")
def _prune(should_prune):
    cases = [(0.5, [], False), (0.5, [0.4], True), (0.3, [0.4], False), (0.65, [0.9, 0.5, 0.7, 0.4], True),
             (0.55, [0.9, 0.5, 0.7, 0.4], False), (0.6, [0.2, 0.6, 1.0], False), (0.61, [0.2, 0.6, 1.0], True)]
    for value, finished, want in cases:
        got = should_prune(value, list(finished))
        if bool(got) != want:
            raise Wrong(f"should_prune({value}, {finished}) returned {got!r}; the rule says {want}.")
    return "it agrees with the median rule on every case, the empty study included."
