"""Exercises of notebook 03, parallel and asynchronous SGD: what a straggler costs, and how stale gradients get."""
from __future__ import annotations

from . import answer

answer("03.sync_speedup", "the speed-up of synchronous SGD with a straggler", "8abe9bd4bfaa25d2", sig=3,
       hint="each step, every worker computes one gradient and all wait for the slowest: with 4 workers, one "
            "3x slower, a step takes 3 units and yields 4 gradients; one normal worker yields 1 per unit.",
       mistakes={"47a03bc7679a28ef": "4 would need every worker at full speed: all wait for the slow one.",
                 "f525cbb07133ac5d": "that is the asynchronous case, where nobody waits."},
       about="the straggler sets the pace: most of 4 workers' time is spent waiting.")

answer("03.async_speedup", "the speed-up of asynchronous SGD with the same straggler", "5277152544ed5757", sig=3,
       hint="nobody waits: in one unit of time the three normal workers push one gradient each and the slow "
            "one a third of one.",
       mistakes={"88c47f6da62a2372": "the slow worker adds only a third of a gradient per unit of time.",
                 "d3a3d4e5cace5dba": "that is the synchronous case; here nobody waits."},
       about="asynchronous workers never wait, at the price of stale gradients.")

answer("03.staleness", "how stale the straggler's gradients are", "cc1373515b5b15bb", sig=3,
       hint="staleness counts the updates other workers applied between reading the weights and pushing the "
            "gradient: while the slow worker computes one gradient (3 units), each of the 3 others pushes 3.",
       mistakes={"8b89c474af5e92e4": "3 is the staleness when all 4 workers run at the same speed; the slow "
                                     "one is away 3 times as long.",
                 "678cfd7935572478": "count the updates of all 3 other workers during the slow one's gradient."},
       about="a slow worker's gradients are the stalest: asynchronous methods must tolerate that.")
