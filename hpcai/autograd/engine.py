"""Reverse-mode engine: walk the graph in reverse topological order and accumulate gradients.

Two rules keep every DAG right, whatever order its branches rejoin in: a node is expanded once and
emitted after everything it consumes (a true post-order), and no gradient array is written in place
while the pass runs — sums are out of place, and leaves receive theirs only when the pass is over.
"""
from __future__ import annotations

from .. import backend, precision


def _topological_order(root):
    """Function nodes reachable from ``root``, each before every node it consumes.

    Iterative depth-first post-order. A node is marked when it is expanded, not when it is queued, so
    one reached along paths of different lengths is still placed after all of its consumers.
    """
    order, expanded, stack = [], set(), [(root, False)]
    while stack:
        fn, done = stack.pop()
        if done:
            order.append(fn)
        elif id(fn) not in expanded:
            expanded.add(id(fn))
            stack.append((fn, True))
            for x in fn.inputs:
                parent = x._ctx if x is not None else None
                if parent is not None and id(parent) not in expanded:
                    stack.append((parent, False))
    return order[::-1]


def _owner(array):
    """The array that owns ``array``'s memory (itself unless it is a view)."""
    while getattr(array, "base", None) is not None:
        array = array.base
    return id(array)


def backward(tensor, grad=None, retain_graph=False) -> None:
    """Accumulate d(tensor)/d(leaf) into ``leaf.grad`` for every leaf that requires grad.

    ``grad`` is the upstream gradient (default 1 for a one-element tensor). The graph is freed
    afterwards unless ``retain_graph`` is true; a second backward through a freed graph raises.
    """
    if not tensor.requires_grad:
        raise RuntimeError("backward: the tensor does not require grad (no input had requires_grad=True)")
    xp = tensor.xp
    if grad is None:
        if tensor.size != 1:
            raise RuntimeError(f"backward: grad can be implied only for a one-element tensor, "
                               f"got shape {tensor.shape}; pass grad=")
        grad = xp.ones_like(tensor.data)
    else:
        raw = grad if backend.is_array(grad) else getattr(grad, "data", grad)  # a cupy array's .data is a pointer
        grad = xp.asarray(raw, dtype=tensor.dtype)
        if grad.shape != tensor.shape:
            raise ValueError(f"backward: grad has shape {grad.shape}, expected the tensor's {tensor.shape}")
    finished = {}  # id(tensor) -> [tensor, gradient]: leaves and retained tensors, stored once the pass is over

    def finish(t, g):
        entry = finished.setdefault(id(t), [t, None])
        entry[1] = g if entry[1] is None else entry[1] + g

    if tensor._ctx is None:  # a leaf: its gradient is the upstream gradient itself
        finish(tensor, grad)
    pending = {id(tensor._ctx): grad} if tensor._ctx is not None else {}
    for fn in _topological_order(tensor._ctx) if pending else ():
        gy = pending.pop(id(fn), None)
        if gy is None:
            continue
        if fn.released:
            raise RuntimeError(f"backward through {type(fn).__name__} a second time: its graph was freed; "
                               "pass retain_graph=True to the first backward")
        out = fn.output() if fn.output is not None else None
        if out is not None and out._retain_grad:
            finish(out, gy)
        gxs = fn.backward(gy)
        gxs = gxs if isinstance(gxs, tuple) else (gxs,)
        if fn.autocast is not None:  # gradients leave a reduced-precision op in that precision (underflow too)
            gxs = tuple(None if g is None else precision.round_to(g, fn.autocast) for g in gxs)
        for x, gx, need in zip(fn.inputs, gxs, fn.needs_input_grad):
            if not need or gx is None:
                continue
            if gx.shape != x.shape:
                raise RuntimeError(f"{type(fn).__name__}.backward returned a gradient of shape {gx.shape} "
                                   f"for an input of shape {x.shape}")
            if gx.dtype != x.dtype:  # type promotion in forward (fp32 * fp64) is undone here, once
                gx = gx.astype(x.dtype)
            if x._ctx is None:
                finish(x, gx)
            else:
                key = id(x._ctx)
                pending[key] = gx if key not in pending else pending[key] + gx
        if not retain_graph:
            fn.release()
    # Ops may hand one array (or views of it) to several inputs, and optimizers update .grad in place: a
    # .grad adopts its array only if no other .grad and not the caller's ``grad`` owns that memory.
    owned = {_owner(grad)}
    for t, g in finished.values():
        if t.grad is not None:
            t.grad += g
            continue
        key = _owner(g)
        shared = key in owned or not (g.flags.c_contiguous or g.flags.f_contiguous)  # e.g. broadcast views
        t.grad = g.copy() if shared else g
        owned.add(key)
