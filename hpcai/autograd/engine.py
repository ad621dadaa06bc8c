"""Reverse-mode engine: walk the graph in topological order and accumulate gradients."""
from __future__ import annotations

from .. import backend, precision


def _topological_order(root):
    """Function nodes reachable from ``root``, each before every node it consumes (iterative DFS)."""
    order, seen, stack = [], {id(root)}, [(root, False)]
    while stack:
        fn, expanded = stack.pop()
        if expanded:
            order.append(fn)
            continue
        stack.append((fn, True))
        for x in fn.inputs:
            parent = x._ctx if x is not None else None
            if parent is not None and id(parent) not in seen:
                seen.add(id(parent))
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
    # Ops may hand the same array (or views of it) to several inputs; a leaf's .grad must own its memory,
    # since optimizers update gradients in place. Copy only when memory is already owned by a leaf.
    owned = {_owner(grad)}

    def to_leaf(leaf, g):
        if leaf.grad is not None:
            leaf.grad += g
            return
        key = _owner(g)
        shared = key in owned or not (g.flags.c_contiguous or g.flags.f_contiguous)  # e.g. broadcast views
        leaf.grad = g.copy() if shared else g
        owned.add(key)

    if tensor._ctx is None:  # a leaf: its gradient is the upstream gradient itself
        to_leaf(tensor, grad)
        return
    pending = {id(tensor._ctx): grad}
    for fn in _topological_order(tensor._ctx):
        gy = pending.pop(id(fn), None)
        if gy is None:
            continue
        if fn.released:
            raise RuntimeError(f"backward through {type(fn).__name__} a second time: its graph was freed; "
                               "pass retain_graph=True to the first backward")
        out = fn.output() if fn.output is not None else None
        if out is not None and out._retain_grad:
            to_leaf(out, gy)
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
                to_leaf(x, gx)
            else:
                key = id(x._ctx)
                pending[key] = gx if key not in pending else pending[key] + gx
        if not retain_graph:
            fn.release()
