"""Optimizer: the base class every update rule shares, with PyTorch's names and habits.

An optimizer holds *parameter groups* (dicts: ``"params"`` plus hyperparameters such as ``"lr"``)
and per-parameter *state* (raw arrays shaped like the parameter, plus a step count). Subclasses
write one method, :meth:`Optimizer._update`, on raw arrays with ``xp = get_array_module(w)``, so the
same rule runs on numpy and cupy, in the parameter's dtype, updating ``p.data`` in place.

The state dict is pickle-free: a flat dict of named host arrays (``"state.3.exp_avg"``) and a
JSON-able ``meta`` dict (hyperparameters, step counts, parameter shapes), exactly what
:func:`hpcai.io.save_arrays` stores. Loading it back and continuing is bit-identical to never stopping.
"""
from __future__ import annotations


import numpy as np

from .. import backend, checks, io
from ..autograd.tensor import Tensor


def check_betas(betas) -> tuple:
    """``betas`` as a pair of floats, each in [0, 1) (the decay rates of Adam-style moment averages)."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas: expected a pair (beta1, beta2), got {betas!r}")
    return tuple(checks.number(f"betas[{i}]", b, 0.0, 1.0, high_open=True) for i, b in enumerate(betas))


MAX_LR = 1e8      # shifted or scaled losses need rates far above 1 (notebook 02: loss x 2^-20, lr x 2^20);
                  # 1e8 still refuses a mistyped exponent (1e20, 1e308) whose updates overflow
MAX_DECAY = 1e4   # weight decay, eps, trust coefficients: the same guard against a mistyped exponent


def check_hyper(group: dict, rates=(), fractions=(), flags=()) -> None:
    """Check and normalise a group's hyperparameters in place: ``rates`` (lr, weight_decay, eps, ...) are
    numbers in [0, MAX_LR], ``fractions`` (momentum, dampening, alpha) in [0, 1], ``flags`` True or False."""
    for name in rates:
        group[name] = checks.number(name, group[name], 0.0, MAX_LR if name == "lr" else MAX_DECAY)
    for name in fractions:
        group[name] = checks.number(name, group[name], 0.0, 1.0)
    for name in flags:
        group[name] = checks.flag(name, group[name])


def buffer(state: dict, name: str, like, fill: float = 0.0):
    """``state[name]``, created on first use as an array shaped like ``like`` and filled with ``fill``."""
    if name not in state:
        state[name] = backend.get_array_module(like).full_like(like, fill)
    return state[name]


def l2norm(x):
    """Euclidean norm of an array as a 0-d array on its device, accumulated in at least fp32."""
    xp = backend.get_array_module(x)
    x = x.astype(np.promote_types(x.dtype, np.float32), copy=False)
    return xp.sqrt(xp.sum(x * x))


def _index(name: str, n: int) -> int:
    """The parameter index in a state entry's name ``"state.<i>.<key>"``, checked against ``n`` parameters."""
    parts = name.split(".", 2)
    if len(parts) != 3 or parts[0] != "state" or not parts[1].isdigit() or int(parts[1]) >= n:
        raise ValueError(f"state_dict: entry {name!r} does not name the state of one of {n} parameters")
    return int(parts[1])


class Optimizer:
    """Base class: holds parameter groups and state; subclasses define ``_validate`` and ``_update``.

    Args:
        params: an iterable of Parameters (leaf Tensors that require grad), or of dicts each with
            ``"params"`` and any hyperparameters that override the defaults for that group.
        **defaults: hyperparameters for groups that do not set them.
    """

    def __init__(self, params, **defaults):
        if isinstance(params, (Tensor, dict)):
            raise TypeError(f"params: expected an iterable of Parameters or of dicts, got one {type(params).__name__}")
        params = list(params)
        if not params:
            raise ValueError("params: expected at least one Parameter, got an empty list")
        self.defaults = defaults
        self.param_groups: list[dict] = []
        self.state: dict = {}
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, group: dict) -> None:
        """Add a group of parameters with its own hyperparameters (missing ones come from the defaults)."""
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"param group: expected a dict with a 'params' entry, got {type(group).__name__}")
        unknown = sorted(set(group) - set(self.defaults) - {"params"})
        if unknown:
            raise ValueError(f"param group: unknown option(s) {unknown}; "
                             f"{type(self).__name__} takes {sorted(self.defaults)}")
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for i, p in enumerate(params):
            where = f"params[{i}]"
            if not isinstance(p, Tensor):
                raise TypeError(f"{where}: expected a Parameter (an hpcai Tensor), got {type(p).__name__}")
            if not p.requires_grad:
                raise ValueError(f"{where}: expected a Tensor that requires grad, got one with requires_grad=False")
            if not p.is_leaf:
                raise ValueError(f"{where}: expected a leaf Tensor, got the result of an operation")
            if id(p) in seen:
                raise ValueError(f"{where}: this parameter appears more than once in the optimizer")
            seen.add(id(p))
        if not params:
            raise ValueError("params: expected at least one Parameter, got an empty list")
        full = {**self.defaults, **{k: v for k, v in group.items() if k != "params"}}
        self._validate(full)
        self.param_groups.append({"params": params, **full})

    def _validate(self, group: dict) -> None:
        """Check a group's hyperparameters (and normalise them to plain floats/bools), in place."""
        raise NotImplementedError(type(self).__name__)

    def _update(self, w, g, state: dict, group: dict) -> None:
        """Update the raw array ``w`` in place from gradient ``g`` (same dtype; do not modify ``g``)."""
        raise NotImplementedError(type(self).__name__)

    # -- the training loop ---------------------------------------------------------------------------
    def step(self, closure=None):
        """Apply one update to every parameter that has a gradient; returns ``closure()`` if given."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.shape != p.data.shape:
                    raise ValueError(f"grad: shape {p.grad.shape} does not match its parameter's {p.data.shape}")
                state = self.state.setdefault(p, {"step": 0})
                state["step"] += 1
                self._update(p.data, p.grad.astype(p.data.dtype, copy=False), state, group)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget gradients (``None``, so the next backward writes rather than adds), or zero them."""
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad[...] = 0

    # -- state dict ----------------------------------------------------------------------------------
    def _params(self) -> list:
        return [p for group in self.param_groups for p in group["params"]]

    def state_dict(self) -> dict:
        """``{"arrays": {name: host array}, "meta": JSON-able dict}``: pass both to ``io.save_arrays``."""
        arrays, state_meta = {}, {}
        for i, p in enumerate(self._params()):
            for key, value in self.state.get(p, {}).items():
                if backend.is_array(value):
                    arrays[f"state.{i}.{key}"] = backend.to_host(value).copy()
                else:
                    state_meta.setdefault(str(i), {})[key] = value
        groups, start = [], 0
        for group in self.param_groups:
            n = len(group["params"])
            hyper = {k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items() if k != "params"}
            groups.append({**hyper, "params": list(range(start, start + n))})
            start += n
        meta = {"optimizer": type(self).__name__, "param_groups": groups, "state": state_meta,
                "param_shapes": [list(p.shape) for p in self._params()]}
        return {"arrays": arrays, "meta": meta}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyperparameters and state from :meth:`state_dict`; refuses anything that does not fit.

        Everything is checked before anything is changed, so a refused load leaves the optimizer as it was.
        """
        arrays, meta = state_dict["arrays"], state_dict["meta"]
        if meta.get("optimizer") != type(self).__name__:
            raise ValueError(f"state_dict: saved by {meta.get('optimizer')!r}, cannot load into {type(self).__name__}")
        params, groups = self._params(), meta["param_groups"]
        sizes = [len(g["params"]) for g in groups]
        if sizes != [len(g["params"]) for g in self.param_groups]:
            raise ValueError(f"state_dict: has parameter groups of sizes {sizes}, this optimizer "
                             f"{[len(g['params']) for g in self.param_groups]}")
        for i, (p, shape) in enumerate(zip(params, meta["param_shapes"])):
            if tuple(shape) != p.shape:
                raise ValueError(f"state_dict: parameter {i} has shape {tuple(shape)}, this optimizer's {p.shape}")
        for saved in groups:  # hyperparameters from a file get the same checks as from a caller
            self._validate({k: (tuple(v) if isinstance(v, list) else v) for k, v in saved.items() if k != "params"})
        new_state = {}
        for name, value in arrays.items():
            p, key = params[_index(name, len(params))], name.split(".", 2)[2]
            if np.shape(value) != p.shape:
                raise ValueError(f"state_dict: {name} has shape {np.shape(value)}, its parameter {p.shape}")
            value = np.asarray(value).astype(p.dtype)  # a fresh copy, in the parameter's dtype ...
            new_state.setdefault(p, {})[key] = backend.to_device(value, p.device)  # ... on its device
        for i, scalars in meta["state"].items():
            new_state.setdefault(params[_index(f"state.{i}.", len(params))], {}).update(scalars)
        for group, saved in zip(self.param_groups, groups):
            group.update({k: (tuple(v) if isinstance(v, list) else v) for k, v in saved.items() if k != "params"})
        self.state = new_state

    def save(self, path) -> None:
        """Write the state dict to ``path`` (.npz or .h5), checksummed and atomically."""
        sd = self.state_dict()
        io.save_arrays(path, sd["arrays"], meta=sd["meta"])

    def load(self, path) -> "Optimizer":
        """Load a file written by :meth:`save` (the checksum is verified first)."""
        arrays, meta = io.load_arrays(path)
        self.load_state_dict({"arrays": arrays, "meta": meta})
        return self

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}("]
        for i, group in enumerate(self.param_groups):
            hyper = ", ".join(f"{k}={v}" for k, v in group.items() if k != "params")
            lines.append(f"  group {i}: {len(group['params'])} params, {hyper}")
        return "\n".join(lines) + "\n)"
