"""Every registered op, gradient-checked in fp64 and compared with PyTorch when it is installed.

Nothing here names an op: the tests iterate ``hpcai.OPS``, so a newly registered op is checked too.
"""
import zlib

import numpy as np
import pytest

from hpcai import OPS, Tensor, gradcheck
from hpcai.ops import Const

# The op families the core promises (issue: foundation); registering is what brings each under test.
REQUIRED = """add sub mul div pow exp log sqrt abs tanh sigmoid relu leaky_relu gelu softplus eq ne lt le gt ge
where sum mean max min var matmul reshape transpose concatenate stack getitem gather pad softmax log_softmax
logsumexp conv2d conv_transpose2d max_pool2d avg_pool2d pixel_shuffle dropout batch_norm layer_norm
cross_entropy mse_loss l1_loss huber_loss""".split()


def samples(name):
    return OPS[name].samples(np.random.default_rng(zlib.crc32(name.encode())))


def _convert(value, to_array):
    if isinstance(value, tuple):
        return tuple(_convert(v, to_array) for v in value)
    return to_array(value) if isinstance(value, np.ndarray) else value


def materialise(sample, xp):
    """Float arrays -> fp64 Tensors requiring grad on backend ``xp``; Const values unwrapped."""
    def arg(a):
        if isinstance(a, Const):
            return _convert(a.value, xp.asarray)
        if isinstance(a, np.ndarray) and a.dtype.kind == "f":
            return Tensor(xp.asarray(a, dtype=np.float64), requires_grad=True)
        return a
    return [arg(a) for a in sample.args], {k: arg(v) for k, v in sample.kwargs.items()}


def test_registry_has_every_required_op():
    missing = sorted(set(REQUIRED) - set(OPS))
    assert not missing, f"ops not registered: {missing}"


@pytest.mark.parametrize("name", sorted(OPS))
def test_gradcheck(name, xp):
    spec = OPS[name]
    for sample in samples(name):
        args, kwargs = materialise(sample, xp)
        if spec.differentiable:
            assert gradcheck(spec.fn, args, kwargs, **spec.tol)
        else:
            out = spec.fn(*args, **kwargs)
            assert not out.requires_grad, f"{name} is registered as non-differentiable but records a graph"


@pytest.mark.parametrize("name", sorted(n for n in OPS if OPS[n].torch is not None))
def test_matches_torch(name):
    torch = pytest.importorskip("torch")
    spec = OPS[name]
    for k, sample in enumerate(samples(name)):
        args, kwargs = materialise(sample, np)
        out = spec.fn(*args, **kwargs)

        def to_torch(a):
            if isinstance(a, Tensor):
                return torch.tensor(a.numpy(), requires_grad=True)
            if isinstance(a, Const):
                return _convert(a.value, torch.from_numpy)
            return _convert(a, torch.from_numpy)
        targs = [to_torch(a) for a in args]
        tkwargs = {key: to_torch(v) for key, v in kwargs.items()}
        ref = spec.torch(*targs, **tkwargs)
        np.testing.assert_allclose(out.numpy(), ref.detach().numpy(), rtol=1e-6, atol=1e-6,
                                   err_msg=f"{name} sample {k}: forward differs from torch")
        if not spec.differentiable:
            continue
        v = np.random.default_rng(k).standard_normal(out.shape)
        out.backward(v)
        ref.backward(torch.from_numpy(v))
        for i, (a, t) in enumerate(zip(args, targs)):
            if isinstance(a, Tensor):
                np.testing.assert_allclose(a.grad, t.grad.numpy(), rtol=1e-6, atol=1e-6,
                                           err_msg=f"{name} sample {k}: gradient of input {i} differs from torch")
