"""The one training step (hpcai.train.TrainStep): against PyTorch doing the same, clipping, skipping, errors."""
import numpy as np
import pytest

from hpcai import amp, nn, ops, optim
from hpcai.train import TrainStep, fit


def mlp(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return nn.Sequential(nn.Linear(5, 7, rng=rng, dtype=dtype), nn.Tanh(), nn.Linear(7, 3, rng=rng, dtype=dtype))


def data(seed=1, n=16):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 5)), rng.integers(0, 3, n)


@pytest.mark.parametrize("clip_norm", [None, 0.05])
def test_steps_match_torch(clip_norm):
    """Five SGD-momentum steps (with and without gradient clipping) give PyTorch's weights in fp64."""
    torch = pytest.importorskip("torch")
    model, (x, y) = mlp(), data()
    tmodel = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)).double()
    with torch.no_grad():
        for tp, p in zip(tmodel.parameters(), model.parameters()):
            tp.copy_(torch.tensor(p.data))
    step = TrainStep(model, ops.cross_entropy, optim.SGD(model.parameters(), lr=0.5, momentum=0.9), "fp64",
                     clip_norm=clip_norm)
    topt = torch.optim.SGD(tmodel.parameters(), lr=0.5, momentum=0.9)
    for i in range(5):
        result = step(x, y)
        topt.zero_grad()
        tloss = torch.nn.functional.cross_entropy(tmodel(torch.tensor(x)), torch.tensor(y))
        tloss.backward()
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(tmodel.parameters(), clip_norm)
        topt.step()
        assert result.stepped is True
        assert result.loss == pytest.approx(tloss.item(), rel=1e-12)
    for tp, p in zip(tmodel.parameters(), model.parameters()):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_clipping_bounds_the_update():
    """With plain SGD at lr 1 the update is the clipped gradient: its joint norm is the clip norm."""
    model, (x, y) = mlp(), data()
    before = [p.data.copy() for p in model.parameters()]
    step = TrainStep(model, ops.cross_entropy, optim.SGD(model.parameters(), lr=1.0), "fp64", clip_norm=1e-3)
    step(x, y)
    moved = np.sqrt(sum(((p.data - b) ** 2).sum() for p, b in zip(model.parameters(), before)))
    assert moved == pytest.approx(1e-3, rel=1e-5)


def test_fit_clips_like_the_step():
    """fit(clip_norm=...) is the same step: equal weights after one epoch of full batches."""
    x, y = data(n=32)
    a, b = mlp(), mlp()
    fit(a, (x, y), "cross_entropy", optim.SGD(a.parameters(), lr=0.3), epochs=1, batch_size=32, verbose=0,
        precision="fp64", clip_norm=0.01, shuffle=False)
    TrainStep(b, ops.cross_entropy, optim.SGD(b.parameters(), lr=0.3), "fp64", clip_norm=0.01)(x, y)
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p.data, q.data)


def test_overflow_skips_the_update_and_backs_off():
    """mixed-fp16: a loss that overflows fp16 leaves the weights alone and halves the scale."""
    model, (x, y) = mlp(dtype=np.float32), data()
    step = TrainStep(model, lambda out, t: ops.cross_entropy(out, t) * 1e6, optim.SGD(model.parameters(), lr=0.1),
                     "mixed-fp16")
    before = [p.data.copy() for p in model.parameters()]
    scale = step.scaler.scale
    result = step(x.astype(np.float32), y)
    assert result.stepped is False and step.skipped == 1 and step.scaler.scale == scale / 2
    for p, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.data, b)


def test_endless_overflow_is_an_error_naming_the_step():
    model, (x, y) = mlp(dtype=np.float32), data()
    step = TrainStep(model, lambda out, t: ops.cross_entropy(out, t) * np.inf, optim.SGD(model.parameters(), lr=0.1),
                     "mixed-fp16", where="learner")
    with pytest.raises(FloatingPointError, match=r"learner: the loss scaler skipped 30 steps in a row up to batch 30"), \
            pytest.warns(RuntimeWarning, match=r"learner: step skipped at batch \d+: the loss is inf"):
        for i in range(40):
            step(x.astype(np.float32), y, f"batch {i + 1}")


def test_non_finite_loss_without_a_scaler_names_where():
    model, (x, y) = mlp(), data()
    x[3, 1] = np.nan
    step = TrainStep(model, ops.cross_entropy, optim.SGD(model.parameters(), lr=0.1), "fp64", where="fit")
    with pytest.raises(FloatingPointError, match="fit: non-finite loss at epoch 2, step 7"):
        step(x, y, "epoch 2, step 7")
    with pytest.raises(FloatingPointError, match="fit: cross_entropy: the loss is not finite"):
        step.gradient(x, y)
    nan_loss = TrainStep(model, lambda out, t: ops.cross_entropy(out, t, check_finite=False), where="worker 2")
    with pytest.raises(FloatingPointError, match="worker 2: the minibatch loss is nan; the weights diverged"):
        nan_loss.gradient(x, y)


def test_gradient_only_leaves_the_weights():
    """gradient(): the loss and p.grad, no update (what the asynchronous strategies' shared store applies)."""
    model, (x, y) = mlp(), data()
    before = [p.data.copy() for p in model.parameters()]
    loss, out = TrainStep(model, ops.cross_entropy, policy="fp64").gradient(x, y)
    assert out.shape == (16, 3) and np.isfinite(loss)
    assert all(p.grad is not None and np.any(p.grad) for p in model.parameters())
    for p, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.data, b)


@pytest.mark.parametrize("bad, message", [
    ({"clip_norm": 0}, "clip_norm: expected a finite number > 0"),
    ({"clip_norm": float("nan")}, "clip_norm: expected a finite number > 0"),
    ({"scaler": "yes"}, "loss_scaler: expected a DynamicLossScaler"),
])
def test_bad_arguments(bad, message):
    model = mlp()
    with pytest.raises((ValueError, TypeError), match=message):
        TrainStep(model, ops.cross_entropy, optim.SGD(model.parameters(), lr=0.1), **bad)


def test_no_optimizer_means_gradient_only():
    model, (x, y) = mlp(), data()
    with pytest.raises(RuntimeError, match="has no optimizer; use gradient"):
        TrainStep(model, ops.cross_entropy, policy=amp.get_policy("fp64"))(x, y)
