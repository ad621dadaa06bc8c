"""hpcai: HPC + AI in Jupyter — tensors, autodiff and reduced precision on numpy/cupy, trained over MPI.

``import hpcai`` loads the core (backend, precision, autograd, ops) and the training stack (nn, optim, amp,
train, io, datasets); MPI, ipyparallel, HDF5 and plotting load only when first used.
"""
from . import backend, precision
from .autograd import Tensor, gradcheck, no_grad
from . import ops
from .ops import OPS
from . import amp, datasets, io, nn, optim, train

__version__ = "0.1.0"


def tensor(data, requires_grad: bool = False, dtype=None, device=None) -> Tensor:
    """A new leaf tensor from array-like ``data`` (Python floats become float32)."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype, device=device)


__all__ = ["OPS", "Tensor", "amp", "backend", "datasets", "gradcheck", "io", "nn", "no_grad", "ops", "optim",
           "precision", "tensor", "train"]
