"""Every registered op, gradient-checked in fp64 and compared with PyTorch when it is installed.

The registry tests name no op: they iterate ``hpcai.OPS``, so a newly registered op is checked too. The
few deliberate differences from PyTorch, each documented in its op's docstring, are tested by name at the end.
"""
import zlib

import numpy as np
import pytest

from hpcai import OPS, Tensor, gradcheck, ops
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
            if sample.gradcheck:  # edge samples (inf, NaN) are left to test_matches_torch
                assert gradcheck(spec.fn, args, kwargs, **spec.tol)
        else:
            out = spec.fn(*args, **kwargs)
            assert not out.requires_grad, f"{name} is registered as non-differentiable but records a graph"


def assert_close(got, want, what):
    """Within 1e-10 relative, element by element, with no absolute floor, so values like sigmoid's tail
    (1e-300) count too; equal infinities and NaN in the same places agree."""
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=0, err_msg=what)


@pytest.mark.parametrize("name", sorted(n for n in OPS if OPS[n].torch is not None))
def test_matches_torch(name):
    torch = pytest.importorskip("torch")
    spec = OPS[name]
    for k, sample in enumerate(samples(name)):
        with np.errstate(all="ignore"):  # edge samples make inf and NaN on purpose (PyTorch does so silently)
            check_sample(spec, k, sample, torch)


def check_sample(spec, k, sample, torch):
    """Forward and every input's gradient (for a random output gradient) against the torch reference."""
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
    assert_close(out.numpy(), ref.detach().numpy(), f"{spec.name} sample {k}: forward differs from torch")
    if not spec.differentiable:
        return
    v = np.random.default_rng(k).standard_normal(out.shape)
    out.backward(v)
    ref.backward(torch.from_numpy(v))
    for i, (a, t) in enumerate(zip(args, targs)):
        if isinstance(a, Tensor):
            assert_close(a.grad, t.grad.numpy(), f"{spec.name} sample {k}: gradient of input {i} differs from torch")


# -- deliberate differences from PyTorch, each documented in its op's docstring ----------------------------
def grads(fn, *arrays, **kwargs):
    """The output of ``fn`` on fp64 tensors made from ``arrays``, and their gradients for an all-ones gy."""
    xs = [Tensor(np.asarray(a, dtype=np.float64), requires_grad=True) for a in arrays]
    out = fn(*xs, **kwargs)
    out.backward(np.ones(out.shape))
    return out.numpy(), [x.grad for x in xs]


def test_maximum_and_minimum_send_a_tie_to_a():
    # torch.maximum / minimum split a tie's gradient in half; here a gets it all, as x does in torch.clamp
    _, (ga, gb) = grads(ops.maximum, [1.0, 2.0, 3.0], [1.0, 0.0, 5.0])
    np.testing.assert_array_equal(ga, [1, 1, 0])
    np.testing.assert_array_equal(gb, [0, 0, 1])
    _, (ga, gb) = grads(ops.minimum, [1.0, 2.0, 3.0], [1.0, 0.0, 5.0])
    np.testing.assert_array_equal(ga, [1, 0, 1])
    np.testing.assert_array_equal(gb, [0, 1, 0])


def test_gather_counts_negative_indices_from_the_end():
    # PyTorch rejects negative indices; here they count from the end, as in numpy
    y, (g,) = grads(lambda x: ops.gather(x, np.array([[-1, 0], [-4, -1]]), axis=1), np.arange(12.0).reshape(3, 4))
    np.testing.assert_array_equal(y, [[3, 0], [4, 7]])
    np.testing.assert_array_equal(g, [[1, 0, 0, 1], [1, 0, 0, 1], [0, 0, 0, 0]])


def test_softplus_stays_finite_below_a_threshold_above_709():
    # PyTorch forms e**(beta x) there: loss inf, gradient NaN
    y, (g,) = grads(lambda x: ops.softplus(x, threshold=1000.0), [800.0])
    np.testing.assert_array_equal(y, [800.0])
    np.testing.assert_array_equal(g, [1.0])


# -- bad input names the argument ---------------------------------------------------------------------------
@pytest.mark.parametrize("call, error, match", [
    (lambda: ops.gather(Tensor(np.zeros((3, 4))), np.zeros((4, 2), int), axis=1), ValueError,
     r"gather: index may not be longer than x off the gathered axis 1, but along axis 0 it has 4 > 3"),
    (lambda: ops.gather(Tensor(np.zeros((3, 4))), np.zeros(2, int), axis=1), ValueError,
     r"gather: index must have x's 2 dimensions, got shape \(2,\)"),
    (lambda: ops.gather(Tensor(np.zeros((3, 4))), np.full((3, 1), 4), axis=1), IndexError,
     r"gather: index values must lie in \[-4, 4\) along axis 1, got \[4, 4\]"),
    (lambda: ops.softmax(Tensor(np.array(1.0)), axis=1), ValueError, r"axis: a 0-d tensor takes axis 0 or -1, got 1"),
    (lambda: ops.logsumexp(Tensor(np.array(1.0)), axis=-2), ValueError, r"axis: a 0-d tensor takes axis 0 or -1"),
    (lambda: ops.matmul(Tensor(np.zeros(3)), Tensor(np.zeros(4))), ValueError,
     r"matmul: a's last axis \(3\) must match b's only axis"),
])
def test_bad_input_names_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("threads, block", [(1, 1 << 18), (3, 64)])
def test_batch_norm_cpu_path_matches_torch(rng, monkeypatch, affine, threads, block):
    """Batch norm's training path on the CPU (per-channel dot products over blocks shared among threads; x̂
    rebuilt in backward) against PyTorch in float32, with a mean far from zero, for one thread with whole
    samples and for several threads with blocks of one sample; running statistics too."""
    torch = pytest.importorskip("torch")
    from hpcai.ops import threads as threads_module
    monkeypatch.setattr(threads_module, "workers", lambda: threads)
    monkeypatch.setattr(threads_module, "_BLOCK", block)
    monkeypatch.setattr(threads_module, "_LEAST", 1)
    x = (rng.standard_normal((7, 5, 6, 9)) * 3 + 40).astype(np.float32)
    w, b = rng.uniform(0.5, 1.5, 5).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    gy = rng.standard_normal(x.shape).astype(np.float32)
    rm, rv = np.zeros(5, np.float32), np.ones(5, np.float32)
    xt = Tensor(x, requires_grad=True)
    wt, bt = (Tensor(w, requires_grad=True), Tensor(b, requires_grad=True)) if affine else (None, None)
    y = ops.batch_norm(xt, wt, bt, rm, rv, training=True, momentum=0.3)
    assert y._ctx.fast
    y.backward(gy)
    tx = torch.tensor(x, requires_grad=True)
    tw, tb = (torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)) if affine else (None, None)
    trm, trv = torch.zeros(5), torch.ones(5)
    ty = torch.nn.functional.batch_norm(tx, trm, trv, tw, tb, True, 0.3, 1e-5)
    ty.backward(torch.from_numpy(gy))
    pairs = [(y.numpy(), ty), (xt.grad, tx.grad), (rm, trm), (rv, trv)]
    pairs += [(wt.grad, tw.grad), (bt.grad, tb.grad)] if affine else []
    for got, ref in pairs:
        np.testing.assert_allclose(got, ref.detach().numpy(), rtol=2e-4, atol=2e-4)
