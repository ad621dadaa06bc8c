"""Trial functions for tests/test_tune.py, in a module the engines import (the Tuner's ``path=`` finds it)."""
import time


def sleepy(params, ctx):
    """A trial of 1 s in 10 reports; raises on every rank when x > 0.9 (a trial's own, symmetric failure)."""
    if params["x"] > 0.9:
        raise ValueError(f"x too large: {params['x']}")
    for step in range(10):
        time.sleep(0.1)
        ctx.report(params["x"] * step, step)
    return params["x"] * ctx.comm.size


def one_rank_raises(params, ctx):
    """Rank 1 raises while rank 0 waits for it in a collective: the group cannot go on alone."""
    if ctx.rank == 1 and params["x"] > 0.5:
        raise RuntimeError("only rank 1 fails")
    return ctx.comm.allreduce_obj(params["x"])
