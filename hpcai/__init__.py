"""hpcai: HPC + AI in Jupyter — tensors, autodiff and reduced precision on numpy/cupy, trained over MPI."""
from . import backend, precision
from .autograd import Tensor, gradcheck, no_grad
from . import ops
from .ops import OPS

__version__ = "0.1.0"


def tensor(data, requires_grad: bool = False, dtype=None, device=None) -> Tensor:
    """A new leaf tensor from array-like ``data`` (Python floats become float32)."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype, device=device)


__all__ = ["OPS", "Tensor", "backend", "gradcheck", "no_grad", "ops", "precision", "tensor"]
