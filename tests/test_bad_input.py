"""Bad input to the core ops gets an error that names the argument and says what was expected."""
import numpy as np
import pytest

from hpcai import Tensor, ops


def t(*shape):
    return Tensor(np.ones(shape))


@pytest.mark.parametrize("call, error, match", [
    (lambda: ops.matmul(t(3, 4), t(5, 2)), ValueError, r"matmul: a's last axis \(4\) must match b's"),
    (lambda: ops.matmul(t(3, 4), t(4, 2), precision="fp8"), ValueError, r"precision must be None or one of"),
    (lambda: ops.reshape(t(3, 4), (5, 2)), ValueError, r"reshape: cannot reshape a tensor of shape \(3, 4\)"),
    (lambda: ops.transpose(t(3, 4), (0, 0)), ValueError, r"transpose: axes must be a permutation"),
    (lambda: ops.concatenate(t(2, 3), t(2, 4)), ValueError, r"concatenate: tensors\[1\] has shape \(2, 4\)"),
    (lambda: ops.stack(t(2, 3), t(3, 2)), ValueError, r"stack: tensors\[1\] has shape"),
    (lambda: ops.sum(t(2, 3), axis=2), ValueError, r"axis: expected integers in \[-2, 2\)"),
    (lambda: ops.sum(t(2, 3), axis=(1, 1)), ValueError, r"axis: repeated axis"),
    (lambda: ops.softmax(t(2, 3), axis=(0, 1)), TypeError, r"axis: expected one integer axis"),
    (lambda: ops.var(t(1, 3), axis=0), ValueError, r"var: correction=1 leaves no degrees of freedom"),
    (lambda: ops.gather(t(2, 3), np.array([[0, 3]]), axis=1), IndexError, r"gather: index values must lie in"),
    (lambda: ops.gather(t(2, 3), np.array([[0.5]]), axis=1), TypeError, r"gather: index must be an integer"),
    (lambda: ops.gather(t(2, 3), np.array([0, 1]), axis=1), ValueError, r"gather: index must have x's 2"),
    (lambda: ops.getitem(t(2, 3), (0, 5)), IndexError, r"getitem: index .* does not fit a tensor of shape"),
    (lambda: ops.pad(t(2, 3), 1, mode="wrap"), ValueError, r"pad: mode must be one of"),
    (lambda: ops.pad(t(2, 3), ((1, 1),) * 3), ValueError, r"pad: pad_width must give"),
    (lambda: ops.pad(t(2, 3), 3, mode="reflect"), ValueError, r"pad: reflect padding of axis 0 by 3"),
    (lambda: ops.where(np.ones((2, 3)), t(2, 3), 0.0), TypeError, r"where: cond must be a boolean"),
    (lambda: ops.cast(t(2), np.int32), TypeError, r"cast: dtype must be a floating-point"),
    (lambda: ops.gelu(t(2), approximate="fast"), ValueError, r"gelu: approximate must be"),
])
def test_error_names_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()
