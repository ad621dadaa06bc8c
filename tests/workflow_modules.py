"""Workflow modules for the tests: each a main(ctx), named in control files as ``workflow_modules:NAME``."""
import ml_dtypes
import numpy as np

DTYPES = [np.float64, np.float32, np.float16, ml_dtypes.bfloat16, np.int32, np.uint8, np.bool_]
SHAPES = [(), (0,), (7,), (3, 5), (2, 3, 4), (1000, 33)]


def pattern(dtype, shape, seed):
    """Values that use every bit pattern class of ``dtype`` (negative, fractional, large), reproducibly."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 1e3
    return (x > 0) if np.dtype(dtype) == np.bool_ else x.astype(dtype)


def tree(rank):
    """A nested dict of arrays and JSON values, as a module sends its results (send_tree)."""
    return {"weights": pattern(np.float32, (3, 4), rank), "count": np.int64(rank),
            "nested": {"steps": pattern(np.int32, (5,), 7), "empty": np.zeros((0, 2)), "label": "run", "x": 1.5}}


def producer(ctx):
    """Sends every dtype and shape over channel "data" to each consumer rank, and puts one tuple per rank."""
    if ctx.rank == 0:
        peer = ctx.channel("data")
        for k, (dtype, shape) in enumerate((d, s) for d in DTYPES for s in SHAPES):
            for rank in range(ctx.params["consumers"]):
                peer.send(pattern(dtype, shape, k), rank=rank, meta={"k": k})
        for rank in range(ctx.params["consumers"]):
            peer.send_tree(tree(rank), rank=rank)
        peer.send({"end": True}, rank=0)
    ctx.space.put(f"from-producer/{ctx.rank}", np.full(3, ctx.rank, np.float64))
    return {"sent": len(DTYPES) * len(SHAPES), "ranks": ctx.size}


def consumer(ctx):
    """Receives what producer sends and checks it bit for bit; rank 0 also takes the producer's tuples."""
    peer = ctx.channel("data")
    mismatches = 0
    for k, (dtype, shape) in enumerate((d, s) for d in DTYPES for s in SHAPES):
        got = peer.recv(rank=0, dtype=dtype, shape=shape, timeout=60)
        expect = pattern(dtype, shape, k)
        same = got.value.tobytes() == expect.tobytes() and got.meta == {"k": k} and got.rank == 0
        mismatches += not same
    got, want = peer.recv_tree(rank=0), tree(ctx.rank)
    mismatches += not (got["count"] == want["count"] and got["nested"]["label"] == "run" and got["nested"]["x"] == 1.5
                       and all(got[k].tobytes() == want[k].tobytes() and got[k].dtype == want[k].dtype
                               for k in ["weights"])
                       and all(got["nested"][k].tobytes() == want["nested"][k].tobytes() and
                               got["nested"][k].shape == want["nested"][k].shape for k in ["steps", "empty"]))
    taken = []
    if ctx.rank == 0:
        assert peer.recv(timeout=60).value == {"end": True}
        for _ in range(ctx.params["producers"]):
            key, value = ctx.space.get("from-producer/*", timeout=60)
            taken.append([key, float(value[0])])
    total = ctx.comm.allreduce_obj(mismatches)
    return {"mismatches": total, "taken": sorted(taken), "ranks": ctx.size}


def counter(ctx):
    """One round of a loop: puts its round into the tuple space and reports it; done after params["rounds"]."""
    ctx.progress.phase(f"round {ctx.iteration}", 1)
    ctx.progress.update(1)
    if ctx.rank == 0:
        ctx.space.put("round", {"iteration": ctx.iteration})
    return {"iteration": ctx.iteration, "done": ctx.iteration + 1 >= ctx.params["rounds"]}


def drain(ctx):
    """After the loop: takes every "round" tuple the loop left."""
    seen = []
    while (item := ctx.space.try_get("round")) is not None:
        seen.append(item[1]["iteration"])
    return {"rounds": sorted(seen)}


def fail(ctx):
    """Raises on rank params["rank"] of this module; the others wait on a collective that never completes."""
    if ctx.rank == ctx.params.get("rank", 0):
        raise ValueError("this module fails on purpose")
    ctx.comm.barrier(poll=True)
    return {}


def sleeper(ctx):
    """Waits on its channel for a message that never comes (stands in for a module hung in communication)."""
    ctx.channel("wait").recv(timeout=600)
    return {}
