"""Module and Parameter: the containers a model is built from, with PyTorch's names and habits.

A Module finds its parameters, buffers (non-trained state such as running statistics) and
sub-modules from its attributes, moves and casts them together, and saves them as a state dict
(host arrays) to checksummed npz/HDF5 files. Parameters are updated in place (``p.data``), so an
optimizer holding them keeps working after ``to(device)`` or ``astype(dtype)``.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .. import backend, io
from ..autograd.tensor import Tensor


class Parameter(Tensor):
    """A Tensor that a Module trains: a leaf that requires grad unless told otherwise."""

    def __init__(self, data, requires_grad: bool = True):
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.dtype}, device='{self.device}')"


class Module:
    """Base class of every layer and model; subclasses set attributes in ``__init__`` and define ``forward``."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}.__init__ must call super().__init__() first")
        if name in self._buffers and not isinstance(value, (Parameter, Module)):
            self._buffers[name] = value  # assigning to a buffer's name updates the buffer
            return
        for table in (self._parameters, self._buffers, self._modules):
            table.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        for table in ("_parameters", "_buffers", "_modules"):
            d = self.__dict__.get(table)
            if d is not None and name in d:
                return d[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def register_buffer(self, name: str, array) -> None:
        """Keep ``array`` (a raw array, e.g. running statistics) as state that is saved and moved, not trained."""
        self.__dict__.pop(name, None)
        self._buffers[name] = array

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # -- traversal ---------------------------------------------------------------------------------
    def named_modules(self, prefix: str = ""):
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        return [m for _, m in self.named_modules()]

    def children(self):
        return list(self._modules.values())

    def named_parameters(self):
        for prefix, m in self.named_modules():
            for name, p in m._parameters.items():
                yield (f"{prefix}.{name}" if prefix else name), p

    def parameters(self) -> list:
        return [p for _, p in self.named_parameters()]

    def named_buffers(self):
        for prefix, m in self.named_modules():
            for name, b in m._buffers.items():
                yield (f"{prefix}.{name}" if prefix else name), b

    def num_parameters(self) -> int:
        return int(sum(p.size for p in self.parameters()))

    # -- modes, devices, dtypes ----------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def _convert(self, fn) -> "Module":
        for m in self.modules():
            for p in m._parameters.values():
                p.data, p.grad = fn(p.data), None
            for name, b in m._buffers.items():
                m._buffers[name] = fn(b) if b is not None else None
        return self

    def to(self, device) -> "Module":
        """Move parameters and buffers to ``device`` in place (gradients are dropped)."""
        dev = backend.as_device(device)
        return self._convert(lambda a: backend.to_device(a, dev))

    def astype(self, dtype) -> "Module":
        """Cast floating-point parameters and buffers to ``dtype`` in place."""
        dtype = np.dtype(dtype)
        return self._convert(lambda a: a.astype(dtype) if a.dtype.kind == "f" else a)

    # -- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Host copies of every parameter and buffer, by dotted name."""
        state = OrderedDict((n, backend.to_host(p.data).copy()) for n, p in self.named_parameters())
        state.update((n, backend.to_host(b).copy()) for n, b in self.named_buffers() if b is not None)
        return state

    def load_state_dict(self, state, strict: bool = True) -> None:
        """Copy arrays into parameters and buffers, cast to each one's dtype and device.

        With ``strict``, missing or unexpected names are an error; shapes must always match.
        """
        own = dict(self.named_parameters())
        own.update(self.named_buffers())
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if strict and (missing or unexpected):
            raise KeyError(f"state: does not match {type(self).__name__}: missing {missing}, unexpected {unexpected}")
        for name in own.keys() & state.keys():
            target, value = own[name], np.asarray(state[name])
            current = target.data if isinstance(target, Tensor) else target
            if value.shape != current.shape:
                raise ValueError(f"state[{name!r}]: shape {value.shape} does not match the model's {current.shape}")
            current[...] = backend.to_device(value.astype(current.dtype, copy=False), backend.device_of(current))

    def save(self, path) -> None:
        """Write the state dict to ``path`` (.npz or .h5), checksummed and atomically."""
        io.save_arrays(path, self.state_dict(), meta={"module": type(self).__name__})

    def load(self, path, strict: bool = True) -> "Module":
        """Load a file written by :meth:`save` (the checksum is verified first)."""
        state, _ = io.load_arrays(path)
        self.load_state_dict(state, strict)
        return self

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, m in self._modules.items():
            lines.append("  " + f"({name}): {m!r}".replace("\n", "\n  "))
        return "\n".join(lines) + ("\n)" if self._modules else ")")


class Sequential(Module):
    """Modules applied in order; indexable like a list."""

    def __init__(self, *layers: Module):
        super().__init__()
        for i, layer in enumerate(layers):
            self.append(layer, str(i))

    def append(self, layer: Module, name: str | None = None) -> "Sequential":
        if not isinstance(layer, Module):
            raise TypeError(f"layer: expected a Module, got {type(layer).__name__}")
        setattr(self, name or str(len(self._modules)), layer)
        return self

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, x):
        for layer in self._modules.values():
            x = layer(x)
        return x
