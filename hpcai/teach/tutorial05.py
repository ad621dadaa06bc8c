"""Exercises of notebook 05, workflows: a stricter loop, and a module that keeps its state in the tuple space."""
from __future__ import annotations

from . import Wrong, judge


@judge("05.stricter", "a control for a model ten times as accurate", given=("tol",),
       hint='strict["modules"]["learn"]["params"]["tol"] = tol / 10, and strict["loop"]["max_iterations"] = 20 '
            "so that the loop has the rounds it needs.")
def _stricter(control, tol):
    from hpcai.workflow import SpecError, load
    try:
        learn_tol = control["modules"]["learn"]["params"]["tol"]
        rounds = control["loop"]["max_iterations"]
    except (KeyError, TypeError) as e:
        raise Wrong(f"the control dict has no {e}: start from load(control_file).to_dict()") from None
    if learn_tol > tol / 10 * (1 + 1e-9):
        raise Wrong(f"the learner's tol is {learn_tol:g}; ten times as accurate is {tol / 10:g} or less.")
    if rounds < 20:
        raise Wrong(f"the loop allows {rounds} rounds: a stricter learner needs more, allow 20.")
    try:
        load(control)
    except SpecError as e:
        raise Wrong(f"the control is not valid: {e}") from None
    return f"the learner stops at {learn_tol:g}, after at most {rounds} rounds."


@judge("05.cooling", "a loop that keeps the rod in the tuple space", given=("n", "r"),
       hint='in diffuse: from round 1 on, u = ctx.space.get("rod", timeout=10)[1]; after the steps, '
            'ctx.space.put("rod", u); return done=True once the spread is below p["even"].')
def _cooling(module_file, n, r):
    import pathlib
    import sys

    import numpy as np
    from hpcai.runner import run_workflow
    from hpcai.workflow import ModuleFailed
    folder = pathlib.Path(module_file).resolve().parent
    sys.modules.pop("cooling", None)  # the file may have changed since the last try
    control = {
        "workflow": {"name": "cooling"},
        "tuple_space": {"servers": 1},
        "modules": {"diffuse": {"entry": "cooling:diffuse", "params": {"n": n, "r": r, "steps": 20, "even": 0.05}},
                    "report": {"entry": "cooling:report", "after": ["diffuse"]}},
        "loop": {"modules": ["diffuse"], "until": "diffuse", "max_iterations": 100},
    }
    try:
        cooled = run_workflow(control, path=[folder], verbose=0)
    except ModuleFailed as failure:
        raise Wrong((str(failure).splitlines() or [""])[0]) from None
    if cooled["diffuse"]["done"] is not True:
        raise Wrong("diffuse should return done=True once the spread is below p['even'].")
    if cooled.iterations <= 1:
        raise Wrong("the loop ended after one round: is done true only once the rod is even?")
    if cooled["report"]["spread"] >= 0.05:
        raise Wrong("report found an old rod: does diffuse put the rod back every round?")
    start = np.exp(-((np.arange(n) / n - 0.5) / 0.1) ** 2).mean()
    if abs(cooled["report"]["mean"] - start) > 1e-9:
        raise Wrong("the mean temperature changed: is the rod put back unchanged?")
    return (f"even after {cooled.iterations} rounds ({20 * cooled.iterations} steps); the mean temperature is "
            f"still {cooled['report']['mean']:.4f}: the periodic rod loses no heat.")
