"""Differentiable operations, one registered function per op; ``OPS`` lists them for the tests.

Importing this package also gives :class:`~hpcai.autograd.Tensor` its operators and methods
(``a + b``, ``x.sum()``, ``x[1:3]``), each a thin call of the op defined here.
"""
from ..autograd.tensor import Tensor, as_tensor
from .elementwise import (abs, add, cast, div, eq, exp, ge, gelu, gt, le, leaky_relu, log, lt, maximum, minimum,
                          mul, ne, neg, pow, relu, sigmoid, softplus, sqrt, sub, tanh, where)
from .linalg import linear, matmul
from .reduction import max, mean, min, sum, var
from .registry import OPS, Const, OpSpec, Sample, register
from .shape import concatenate, gather, getitem, pad, reshape, stack, swapaxes, transpose
from .softmax import log_softmax, logsumexp, softmax

from .conv import conv2d, conv_transpose2d
from .dropout import dropout
from .loss import cross_entropy, huber_loss, l1_loss, mse_loss
from .normalization import batch_norm, layer_norm
from .pool import avg_pool2d, max_pool2d, pixel_shuffle


def _swap(fn):
    return lambda self, other: fn(as_tensor(other, self), self)


_METHODS = {
    "__add__": add, "__radd__": _swap(add), "__sub__": sub, "__rsub__": _swap(sub),
    "__mul__": mul, "__rmul__": _swap(mul), "__truediv__": div, "__rtruediv__": _swap(div),
    "__pow__": pow, "__rpow__": _swap(pow), "__matmul__": matmul, "__rmatmul__": _swap(matmul),
    "__neg__": neg, "__abs__": abs, "__getitem__": getitem,
    "__eq__": eq, "__ne__": ne, "__lt__": lt, "__le__": le, "__gt__": gt, "__ge__": ge,
    "sum": sum, "mean": mean, "max": max, "min": min, "var": var,
    "exp": exp, "log": log, "sqrt": sqrt, "tanh": tanh, "sigmoid": sigmoid, "relu": relu,
    "softmax": softmax, "log_softmax": log_softmax, "logsumexp": logsumexp,
    "transpose": transpose, "swapaxes": swapaxes, "pad": pad, "gather": gather, "cast": cast,
    "reshape": lambda self, *shape: reshape(self, shape[0] if len(shape) == 1 else shape),
    "flatten": lambda self, start_axis=0: reshape(self, self.shape[:start_axis] + (-1,)),
}
for _name, _fn in _METHODS.items():
    setattr(Tensor, _name, _fn)
Tensor.T = property(lambda self: transpose(self))
Tensor.__hash__ = object.__hash__  # __eq__ is elementwise, so restore identity hashing
