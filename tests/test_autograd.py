"""The engine: accumulation, topological order, graph freeing, no_grad, and gradient ownership."""
import threading

import numpy as np
import pytest

import hpcai
from hpcai import Tensor, backend, no_grad, ops
from hpcai.autograd import Function, GradcheckError, gradcheck, is_grad_enabled


def t(a, grad=True):
    return Tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def test_diamond_graph_accumulates_both_paths():
    # y = x*x + 3x uses x on two paths; dy/dx = 2x + 3
    x = t([1.0, -2.0, 0.5])
    y = (x * x + 3 * x).sum()
    y.backward()
    np.testing.assert_allclose(x.grad, 2 * x.data + 3)


def test_shared_subexpression_is_backpropagated_once():
    x = t([0.3, 0.7])
    h = ops.exp(x)          # used twice below; its node must run after both consumers
    y = (h * h + h).sum()   # dy/dx = (2h + 1) h
    y.backward()
    np.testing.assert_allclose(x.grad, (2 * np.exp(x.data) + 1) * np.exp(x.data))


def test_gradients_accumulate_across_backward_calls():
    x = t([1.0, 2.0])
    (x * 2).sum().backward()
    (x * 3).sum().backward()
    np.testing.assert_allclose(x.grad, [5.0, 5.0])


def test_leaf_grads_own_their_memory():
    # Add hands the same upstream array to both inputs; in-place updates of one grad must not touch the other
    a, b = t([1.0, 2.0]), t([3.0, 4.0])
    (a + b).backward(np.array([1.0, 1.0]))
    a.grad *= 10
    np.testing.assert_array_equal(b.grad, [1.0, 1.0])
    # a reduction's broadcast gradient must be a real, writable array
    c = t(np.ones((2, 3)))
    c.sum().backward()
    c.grad += 1
    np.testing.assert_array_equal(c.grad, np.full((2, 3), 2.0))


def test_graph_is_freed_after_backward_unless_retained():
    x = t([1.0, 2.0])
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad, 4 * x.data)
    with pytest.raises(RuntimeError, match="second time.*retain_graph=True"):
        y.backward()


def test_freed_graph_drops_saved_arrays():
    x = t(np.ones(1000))
    y = ops.exp(x)
    node = y._ctx
    assert hasattr(node, "y")
    y.sum().backward()
    assert not hasattr(node, "y") and node.inputs == ()


def test_no_grad_records_nothing_and_is_per_thread():
    x = t([1.0])
    with no_grad():
        y = x * 2
        seen = []
        th = threading.Thread(target=lambda: seen.append(is_grad_enabled()))
        th.start()
        th.join()
    assert not y.requires_grad and y._ctx is None
    assert seen == [True]  # another thread keeps recording
    assert is_grad_enabled()


def test_retain_grad_on_intermediate():
    x = t([1.0, 2.0])
    h = (x * 3).retain_grad()
    (h * h).sum().backward()
    np.testing.assert_allclose(h.grad, 2 * h.data)
    np.testing.assert_allclose(x.grad, 18 * x.data)


def test_retained_and_leaf_gradients_of_one_array_do_not_alias():
    # Add hands gy to both inputs: the retained h and the leaf x must each own a .grad, and the pending
    # gradient of h must not be changed by x accumulating into its own
    x = t([0.3, -0.2])
    h = (x + x).retain_grad()
    y = (h + x).exp()
    y.sum().backward()
    np.testing.assert_allclose(x.grad, 3 * np.exp(3 * x.data))
    np.testing.assert_allclose(h.grad, np.exp(3 * x.data))
    assert not np.shares_memory(h.grad, x.grad)
    before = h.grad.copy()
    x.grad *= 0
    np.testing.assert_array_equal(h.grad, before)


def test_caller_grad_is_never_adopted():
    x = t([1.0, 2.0])
    upstream = np.ones(2)
    (x + 0.0).backward(upstream)
    x.grad += 1
    np.testing.assert_array_equal(upstream, [1.0, 1.0])


def test_order_holds_when_a_node_is_reached_along_paths_of_different_lengths():
    # h feeds y directly and through a chain of three; the chain must be finished before h's node runs
    x = t([0.5, -1.0])
    h = x * 2
    y = (h + ((h * 1.5).tanh() * 0.5).exp()).sum()
    y.backward()
    hv = 2 * x.data
    dy_dh = 1 + np.exp(0.5 * np.tanh(1.5 * hv)) * 0.5 * (1 - np.tanh(1.5 * hv) ** 2) * 1.5
    np.testing.assert_allclose(x.grad, 2 * dy_dh)


def test_dtype_promotion_is_undone_for_the_gradient():
    x = Tensor(np.ones(3, np.float32), requires_grad=True)
    w = Tensor(np.full(3, 2.0), requires_grad=True)  # float64
    (x * w).sum().backward()
    assert x.grad.dtype == np.float32 and w.grad.dtype == np.float64


def test_python_floats_become_float32_but_arrays_keep_dtype():
    assert hpcai.tensor([1.0, 2.0]).dtype == np.float32
    assert hpcai.tensor(np.ones(2)).dtype == np.float64
    assert (hpcai.tensor(np.ones(2)) * 2.5).dtype == np.float64
    assert hpcai.tensor(np.ones(2, np.float32)).sum().dtype == np.float32


def test_backward_errors_are_clear():
    with pytest.raises(RuntimeError, match="does not require grad"):
        t([1.0], grad=False).backward()
    with pytest.raises(RuntimeError, match="one-element tensor.*shape \\(2,\\)"):
        (t([1.0, 2.0]) * 2).backward()
    with pytest.raises(ValueError, match="grad has shape \\(3,\\), expected"):
        (t([1.0, 2.0]) * 2).backward(np.ones(3))
    with pytest.raises(TypeError, match="requires_grad: only floating-point"):
        Tensor(np.arange(3), requires_grad=True)


def test_engine_checks_backward_shapes():
    class Broken(Function):
        def forward(self, x):
            return x.sum()

        def backward(self, gy):
            return gy  # wrong: should broadcast to the input's shape

    with pytest.raises(RuntimeError, match="Broken.backward returned a gradient of shape"):
        Broken.apply(t([1.0, 2.0])).backward()


def test_gradcheck_catches_a_wrong_gradient():
    class WrongSquare(Function):
        def forward(self, x):
            self.x = x
            return x * x

        def backward(self, gy):
            return gy * self.x  # missing the factor 2

    with pytest.raises(GradcheckError, match="gradient mismatch"):
        gradcheck(WrongSquare.apply, [t(np.random.default_rng(0).standard_normal(4))])
    with pytest.raises(TypeError, match="float64"):
        gradcheck(ops.exp, [Tensor(np.ones(2, np.float32), requires_grad=True)])


def test_deep_chain_does_not_hit_the_recursion_limit():
    x = t([1.0])
    y = x
    for _ in range(5000):
        y = y * 1.0001
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [1.0001 ** 5000])


def test_tensor_methods_and_operators():
    a = t(np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal((a.T @ a).numpy(), a.data.T @ a.data)
    np.testing.assert_array_equal(a.reshape(3, 2).numpy(), a.data.reshape(3, 2))
    np.testing.assert_array_equal((2 - a).numpy(), 2 - a.data)
    np.testing.assert_array_equal((1 / (a + 1)).numpy(), 1 / (a.data + 1))
    np.testing.assert_array_equal((a > 2).numpy(), a.data > 2)
    assert a[1, 2].item() == 5.0 and a.flatten().shape == (6,)
    assert {a: 1}[a] == 1  # tensors hash by identity even though == is elementwise


def test_mixing_devices_is_an_error():
    if not backend.GPU_AVAILABLE:
        pytest.skip("needs a GPU")
    a = Tensor(np.ones(3))
    b = Tensor(np.ones(3), device="cuda:0")
    with pytest.raises(backend.DeviceError, match="different devices"):
        a + b
    c = (b * 2).cpu()
    assert c.device == backend.Device("cpu")
