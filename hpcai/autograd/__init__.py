"""Define-by-run reverse-mode autodiff: Tensor, Function, the engine, and gradcheck."""
from .engine import backward
from .function import Function, is_grad_enabled, no_grad
from .gradcheck import GradcheckError, gradcheck
from .tensor import Tensor, as_tensor

__all__ = ["Function", "GradcheckError", "Tensor", "as_tensor", "backward", "gradcheck",
           "is_grad_enabled", "no_grad"]
