"""Optimizers, schedules and clipping against torch.optim (or the paper's formula in plain numpy).

Every entry of ``OPTIMIZERS`` and ``SCHEDULES`` is checked; adding one without a reference fails
``test_every_optimizer_has_a_reference``.
"""
import json
import math
import warnings
from functools import partial

import numpy as np
import pytest

from hpcai import Tensor, backend, io
from hpcai.nn import Parameter
from hpcai.optim import (OPTIMIZERS, SCHEDULES, SGD, Adam, CosineAnnealingLR, ExponentialLR, LinearWarmup,
                         RMSprop, StepLR, clip_grad_norm_, clip_grad_value_, get_optimizer)

SHAPES = [(4, 3), (3,)]  # a weight and a bias
STEPS = 6
KWARGS = {"lr": 0.05, "weight_decay": 0.01}  # every optimizer takes both
VARIANTS = [  # (registry name, extra settings): the options the default settings leave untested
    ("sgd", {"momentum": 0.5, "dampening": 0.3}),
    ("adam", {"amsgrad": True, "betas": (0.8, 0.9)}),
    ("adamw", {"amsgrad": True}),
    ("rmsprop", {"momentum": 0.5}),
    ("rmsprop", {"centered": True, "momentum": 0.3, "alpha": 0.9}),
    ("adagrad", {"lr_decay": 0.1, "initial_accumulator_value": 0.2}),
    ("lars", {"exclude_1d": False, "momentum": 0.0, "trust_coefficient": 0.02}),
    ("lamb", {"exclude_1d": False, "weight_decay": 0.0}),
]


# -- independent references for the optimizers torch lacks ---------------------------------------------
def lars_reference(ws, grad_steps, lr, weight_decay=0.0, momentum=0.9, trust_coefficient=1e-3, exclude_1d=True):
    """You, Gitman & Ginsburg 2017, Algorithm 1, on plain arrays; yields the weights after each step."""
    ws, vs = [w.copy() for w in ws], [np.zeros_like(w) for w in ws]
    for grads in grad_steps:
        for i, g in enumerate(grads):
            wn, gn = np.sqrt(np.sum(ws[i] ** 2)), np.sqrt(np.sum(g ** 2))
            adapt = (ws[i].ndim > 1 or not exclude_1d) and wn > 0 and gn > 0
            local_lr = lr * (trust_coefficient * wn / (gn + weight_decay * wn) if adapt else 1.0)
            vs[i] = momentum * vs[i] + local_lr * (g + weight_decay * ws[i])
            ws[i] = ws[i] - vs[i]
        yield ws


def lamb_reference(ws, grad_steps, lr, weight_decay=1e-2, betas=(0.9, 0.999), eps=1e-6, exclude_1d=True):
    """You et al. 2019, Algorithm 2 (phi = identity), on plain arrays; yields the weights after each step."""
    ws = [w.copy() for w in ws]
    ms, vs = [np.zeros_like(w) for w in ws], [np.zeros_like(w) for w in ws]
    for t, grads in enumerate(grad_steps, start=1):
        for i, g in enumerate(grads):
            ms[i] = betas[0] * ms[i] + (1 - betas[0]) * g
            vs[i] = betas[1] * vs[i] + (1 - betas[1]) * g ** 2
            r = (ms[i] / (1 - betas[0] ** t)) / (np.sqrt(vs[i] / (1 - betas[1] ** t)) + eps)
            u = r + weight_decay * ws[i]
            wn, un = np.linalg.norm(ws[i]), np.linalg.norm(u)
            ratio = wn / un if (ws[i].ndim > 1 or not exclude_1d) and wn > 0 and un > 0 else 1.0
            ws[i] = ws[i] - lr * ratio * u
        yield ws


NUMPY_REFERENCES = {"lars": lars_reference, "lamb": lamb_reference}
TORCH_NAMES = {"sgd": ("SGD", {}), "momentum": ("SGD", {"momentum": 0.9}),
               "nesterov": ("SGD", {"momentum": 0.9, "nesterov": True}), "adam": ("Adam", {}),
               "adamw": ("AdamW", {}), "rmsprop": ("RMSprop", {}), "adagrad": ("Adagrad", {})}


def torch_reference(name, ws, grad_steps, **kwargs):
    """The same run with torch.optim; yields the weights after each step."""
    torch = pytest.importorskip("torch")
    cls, preset = TORCH_NAMES[name]
    params = [torch.tensor(w, requires_grad=True) for w in ws]
    opt = getattr(torch.optim, cls)(params, **{**preset, **kwargs})
    for grads in grad_steps:
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g)
        opt.step()
        yield [p.detach().numpy().copy() for p in params]


def problem(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    ws = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grad_steps = [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(STEPS)]
    return ws, grad_steps


def run_hpcai(opt, params, grad_steps):
    for grads in grad_steps:
        for p, g in zip(params, grads):
            p.grad = g.copy()
        opt.step()
        yield [p.data.copy() for p in params]


# -- every optimizer against its reference ---------------------------------------------------------------
def test_every_optimizer_has_a_reference():
    assert set(OPTIMIZERS) == set(TORCH_NAMES) | set(NUMPY_REFERENCES)


@pytest.mark.parametrize("name, extra", [(n, {}) for n in OPTIMIZERS] + VARIANTS,
                         ids=[n for n in OPTIMIZERS] + [f"{n}-{'-'.join(e)}" for n, e in VARIANTS])
def test_matches_reference(name, extra):
    ws, grad_steps = problem()
    kwargs = {**KWARGS, **extra}
    params = [Parameter(w.copy()) for w in ws]
    ours = run_hpcai(get_optimizer(name, params, **kwargs), params, grad_steps)
    reference = NUMPY_REFERENCES.get(name, partial(torch_reference, name))
    n = 0
    for step, (got, want) in enumerate(zip(ours, reference(ws, grad_steps, **kwargs))):
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-8, atol=1e-10, err_msg=f"{name} step {step + 1}")
        n += 1
    assert n == STEPS
    assert not np.allclose(params[0].data, ws[0])  # the run really moved the weights


@pytest.mark.parametrize("name", ["momentum", "adam", "rmsprop"])
def test_param_groups_and_missing_grads_match_torch(name):
    """Two groups with their own lr / weight decay; a parameter whose grad is None is left alone."""
    torch = pytest.importorskip("torch")
    ws, grad_steps = problem(1)
    frozen = np.ones(2)
    params, spare = [Parameter(w.copy()) for w in ws], Parameter(frozen.copy())
    opt = get_optimizer(name, [{"params": [params[0]], "lr": 0.1},
                               {"params": [params[1], spare], "weight_decay": 0.2}], lr=0.01)
    cls, preset = TORCH_NAMES[name]
    tparams = [torch.tensor(w, requires_grad=True) for w in ws]
    topt = getattr(torch.optim, cls)([{"params": [tparams[0]], "lr": 0.1},
                                      {"params": [tparams[1]], "weight_decay": 0.2}], lr=0.01, **preset)
    for grads in grad_steps:
        for p, tp, g in zip(params, tparams, grads):
            p.grad, tp.grad = g.copy(), torch.tensor(g)
        opt.step()
        topt.step()
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-8, atol=1e-10)
    assert np.array_equal(spare.data, frozen) and spare not in opt.state


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_update_keeps_the_parameter_dtype(name):
    """fp32 weights stay fp32, and so does their state, even when the gradients arrive in fp64."""
    ws, grad_steps = problem(2, np.float32)
    params = [Parameter(w) for w in ws]
    opt = get_optimizer(name, params, **KWARGS)
    list(run_hpcai(opt, params, [[g.astype(np.float64) for g in grads] for grads in grad_steps[:2]]))
    assert all(p.data.dtype == np.float32 for p in params)
    state = [v for p in params for v in opt.state[p].values() if isinstance(v, np.ndarray)]
    assert all(a.dtype == np.float32 for a in state) and (state or name == "sgd")


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_backend_gives_the_numpy_result(name, xp):
    """The same run on cupy (where a GPU is usable) as on numpy; the state dict goes via the host and back."""
    ws, grad_steps = problem(9)
    params = [Parameter(xp.array(w)) for w in ws]  # a copy, even on numpy
    opt = get_optimizer(name, params, **KWARGS)
    *_, got = run_hpcai(opt, params, [[xp.asarray(g) for g in grads] for grads in grad_steps])
    host = [Parameter(w.copy()) for w in ws]
    *_, want = run_hpcai(get_optimizer(name, host, **KWARGS), host, grad_steps)
    for g, w in zip(got, want):
        assert backend.get_array_module(g) is xp
        np.testing.assert_allclose(backend.to_host(g), w, rtol=1e-12, atol=1e-14)
    sd = opt.state_dict()
    assert all(isinstance(a, np.ndarray) for a in sd["arrays"].values())
    again = get_optimizer(name, params, **KWARGS)
    again.load_state_dict(sd)
    assert all(backend.get_array_module(v) is xp for s in again.state.values() for v in s.values()
               if backend.is_array(v))


def test_clipping_on_every_backend(xp):
    _, (grads, *_) = problem(10)
    params = [Parameter(xp.zeros(g.shape)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = xp.asarray(g)
    want = np.sqrt(sum(np.sum(g ** 2) for g in grads))
    assert clip_grad_norm_(params, 1.0) == pytest.approx(want, rel=1e-12)
    assert clip_grad_norm_(params, 1.0) == pytest.approx(1.0, rel=1e-5)
    clip_grad_value_(params, 0.1)
    assert float(xp.abs(params[0].grad).max()) <= 0.1


# -- state dict ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_state_dict_round_trip_is_bit_identical(name, suffix, tmp_path):
    if suffix == ".h5":
        pytest.importorskip("h5py")
    ws, grad_steps = problem(3)
    groups = lambda ps: [{"params": ps[:1]}, {"params": ps[1:], "lr": 0.02}]  # noqa: E731
    straight = [Parameter(w.copy()) for w in ws]
    *_, want = run_hpcai(get_optimizer(name, groups(straight), **KWARGS), straight, grad_steps)

    first = [Parameter(w.copy()) for w in ws]
    opt = get_optimizer(name, groups(first), **KWARGS)
    *_, halfway = run_hpcai(opt, first, grad_steps[:3])
    sd = opt.state_dict()
    json.dumps(sd["meta"])  # JSON-able, no pickle needed
    io.save_arrays(tmp_path / f"opt{suffix}", sd["arrays"], meta=sd["meta"])

    resumed = [Parameter(w.copy()) for w in halfway]
    opt2 = get_optimizer(name, groups(resumed), lr=1.0)  # hyperparameters come from the file
    arrays, meta = io.load_arrays(tmp_path / f"opt{suffix}")
    opt2.load_state_dict({"arrays": arrays, "meta": meta})
    assert opt2.param_groups[1]["lr"] == 0.02
    *_, got = run_hpcai(opt2, resumed, grad_steps[3:])
    assert all(np.array_equal(g, w) for g, w in zip(got, want))


def test_save_and_load_methods(tmp_path):
    ws, grad_steps = problem(4)
    params = [Parameter(w.copy()) for w in ws]
    opt = Adam(params, lr=0.1)
    list(run_hpcai(opt, params, grad_steps[:2]))
    opt.save(tmp_path / "adam.npz")
    other = Adam([Parameter(w.copy()) for w in ws]).load(tmp_path / "adam.npz")
    assert other.param_groups[0]["lr"] == 0.1 and other.param_groups[0]["betas"] == (0.9, 0.999)
    state = other.state[other.param_groups[0]["params"][0]]
    assert state["step"] == 2 and np.array_equal(state["exp_avg"], opt.state[params[0]]["exp_avg"])


def test_load_state_dict_refuses_mismatches():
    ws, grad_steps = problem(5)
    params = [Parameter(w.copy()) for w in ws]
    opt = Adam(params)
    list(run_hpcai(opt, params, grad_steps[:1]))
    sd = opt.state_dict()
    with pytest.raises(ValueError, match=r"parameter groups of sizes \[2\], this optimizer \[1\]"):
        Adam([Parameter(ws[0].copy())]).load_state_dict(sd)
    with pytest.raises(ValueError, match=r"parameter 0 has shape \(4, 3\), this optimizer's \(3, 4\)"):
        Adam([Parameter(ws[0].T.copy()), Parameter(ws[1].copy())]).load_state_dict(sd)
    with pytest.raises(ValueError, match=r"saved by 'Adam', cannot load into SGD"):
        SGD([Parameter(w.copy()) for w in ws]).load_state_dict(sd)
    bad = {"arrays": {**sd["arrays"], "state.1.exp_avg": np.zeros(4)}, "meta": sd["meta"]}
    target = Adam([Parameter(w.copy()) for w in ws])
    with pytest.raises(ValueError, match=r"state.1.exp_avg has shape \(4,\), its parameter \(3,\)"):
        target.load_state_dict(bad)
    assert target.state == {}  # a refused load changes nothing
    with pytest.raises(ValueError, match=r"entry 'state.7.exp_avg' does not name the state of one of 2"):
        target.load_state_dict({"arrays": {"state.7.exp_avg": np.zeros(3)}, "meta": sd["meta"]})


# -- schedules ----------------------------------------------------------------------------------------
SCHEDULE_CASES = {  # registry name -> (ours, torch's), each a function of an optimizer
    "step": (lambda o: StepLR(o, step_size=3, gamma=0.5), lambda o, S: S.StepLR(o, step_size=3, gamma=0.5)),
    "exponential": (lambda o: ExponentialLR(o, gamma=0.9), lambda o, S: S.ExponentialLR(o, gamma=0.9)),
    "cosine": (lambda o: CosineAnnealingLR(o, T_max=8, eta_min=0.01),
               lambda o, S: S.CosineAnnealingLR(o, T_max=8, eta_min=0.01)),
    "warmup": (lambda o: LinearWarmup(o, 5, after=CosineAnnealingLR(o, T_max=10), start_factor=0.2),
               lambda o, S: S.SequentialLR(o, [S.LinearLR(o, start_factor=0.2, total_iters=5),
                                                S.CosineAnnealingLR(o, T_max=10)], milestones=[5])),
    "warmup-alone": (lambda o: LinearWarmup(o, 4, start_factor=0.25),
                     lambda o, S: S.LinearLR(o, start_factor=0.25, total_iters=4)),
}


def test_every_schedule_has_a_reference():
    assert set(SCHEDULES) <= set(SCHEDULE_CASES)


@pytest.mark.parametrize("case", list(SCHEDULE_CASES))
def test_schedule_matches_torch(case):
    torch = pytest.importorskip("torch")
    ours, theirs = SCHEDULE_CASES[case]
    w, b = Parameter(np.ones(2)), Parameter(np.ones(1))
    opt = SGD([{"params": [w]}, {"params": [b], "lr": 0.3}], lr=0.1)
    topt = torch.optim.SGD([{"params": [torch.ones(2, requires_grad=True)]},
                            {"params": [torch.ones(1, requires_grad=True)], "lr": 0.3}], lr=0.1)
    sched, tsched = ours(opt), theirs(topt, torch.optim.lr_scheduler)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's SequentialLR warns about its own internals
        for epoch in range(20):
            np.testing.assert_allclose(sched.get_last_lr(), tsched.get_last_lr(), rtol=1e-12, err_msg=f"epoch {epoch}")
            assert [g["lr"] for g in opt.param_groups] == sched.get_last_lr()
            opt.step()
            topt.step()
            sched.step()
            tsched.step()


@pytest.mark.parametrize("case", list(SCHEDULE_CASES))
def test_schedule_state_dict_round_trip(case):
    ours, _ = SCHEDULE_CASES[case]
    make = lambda: SGD([Parameter(np.ones(2))], lr=0.1)  # noqa: E731
    opt = make()
    sched = ours(opt)
    straight = []
    for epoch in range(12):
        sched.step()
        straight.append(sched.get_last_lr())
        if epoch == 6:
            saved_sched, saved_opt = json.loads(json.dumps(sched.state_dict())), opt.state_dict()
    opt2 = make()
    sched2 = ours(opt2)
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    resumed = []
    for _ in range(5):
        sched2.step()
        resumed.append(sched2.get_last_lr())
    assert resumed == straight[7:]


# -- clipping -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.5, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(norm_type, max_norm):
    torch = pytest.importorskip("torch")
    _, (grads, *_) = problem(6)
    params = [Parameter(np.zeros_like(g)) for g in grads] + [Parameter(np.zeros(2))]  # the last has no grad
    tparams = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
    for p, tp, g in zip(params, tparams, grads):
        p.grad, tp.grad = g.copy(), torch.tensor(g)
    total = clip_grad_norm_(params, max_norm, norm_type)
    ttotal = torch.nn.utils.clip_grad_norm_(tparams, max_norm, norm_type)
    assert isinstance(total, float)
    np.testing.assert_allclose(total, ttotal.item(), rtol=1e-12)
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-12)
    assert (max_norm < total) == (not np.array_equal(params[0].grad, grads[0]))


def test_clip_grad_norm_non_finite():
    torch = pytest.importorskip("torch")
    g = np.array([1.0, np.inf, 2.0])
    p, tp = Parameter(np.zeros(3)), torch.zeros(3, dtype=torch.float64, requires_grad=True)
    p.grad, tp.grad = g.copy(), torch.tensor(g)
    with pytest.raises(RuntimeError, match=r"total 2-norm of the gradients is inf"):
        clip_grad_norm_([p], 1.0, error_if_nonfinite=True)
    assert np.array_equal(p.grad, g)  # untouched when refused
    assert clip_grad_norm_(p, 1.0) == math.inf
    torch.nn.utils.clip_grad_norm_([tp], 1.0)
    np.testing.assert_array_equal(p.grad, tp.grad.numpy())  # NaN where inf * 0, zero elsewhere


def test_clip_grad_value_matches_torch():
    torch = pytest.importorskip("torch")
    _, (grads, *_) = problem(7)
    params = [Parameter(np.zeros_like(g)) for g in grads]
    tparams = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
    for p, tp, g in zip(params, tparams, grads):
        p.grad, tp.grad = g.copy(), torch.tensor(g)
    clip_grad_value_(params, 0.4)
    torch.nn.utils.clip_grad_value_(tparams, 0.4)
    for p, tp in zip(params, tparams):
        assert np.array_equal(p.grad, tp.grad.numpy())
    assert np.abs(params[0].grad).max() == 0.4


# -- convergence ----------------------------------------------------------------------------------------
CONVERGENCE_LR = {"sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "adam": 0.05, "adamw": 0.05, "rmsprop": 0.02,
                  "adagrad": 0.5, "lars": 0.1, "lamb": 0.05}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_reduces_a_least_squares_loss(name):
    rng = np.random.default_rng(8)
    X = Tensor(rng.standard_normal((64, 5)))
    y = X.data @ rng.standard_normal((5, 1)) + 0.5 + 0.01 * rng.standard_normal((64, 1))
    w, b = Parameter(0.1 * rng.standard_normal((5, 1))), Parameter(np.zeros(1))
    extra = {"trust_coefficient": 0.1} if name == "lars" else {}
    opt = get_optimizer(name, [w, b], lr=CONVERGENCE_LR[name], **extra)
    losses = []
    for _ in range(200):
        opt.zero_grad()
        loss = ((X @ w + b - Tensor(y)) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 1e-2 * losses[0], f"{name}: loss {losses[0]:.3g} -> {losses[-1]:.3g}"


# -- bad input ------------------------------------------------------------------------------------------
def _p(*shape, **kw):
    return Parameter(np.ones(shape or (2,)), **kw)


@pytest.mark.parametrize("call, error, match", [
    (lambda: SGD([_p()], lr=-0.1), ValueError, r"lr: expected a number in \[0, 1e\+08\], got -0.1"),
    (lambda: Adam([_p()], lr=float("nan")), ValueError, r"lr: expected a number in \[0, 1e\+08\], got nan"),
    (lambda: SGD([{"params": [_p()], "lr": -1}]), ValueError, r"lr: expected a number in \[0, 1e\+08\], got -1"),
    (lambda: Adam([_p()], betas=(0.9, 1.0)), ValueError, r"betas\[1\]: expected a number in \[0, 1\), got 1.0"),
    (lambda: Adam([_p()], betas=(-0.1, 0.9)), ValueError, r"betas\[0\]: expected a number in \[0, 1\), got -0.1"),
    (lambda: Adam([_p()], betas=0.9), ValueError, r"betas: expected a pair \(beta1, beta2\), got 0.9"),
    (lambda: SGD([_p()], momentum=-0.5), ValueError, r"momentum: expected a number in \[0, 1\], got -0.5"),
    (lambda: SGD([_p()], nesterov=True), ValueError, r"nesterov: needs momentum > 0 and dampening = 0, got momentum=0"),
    (lambda: SGD([_p()], momentum=0.9, dampening=0.1, nesterov=True), ValueError, r"and dampening=0.1"),
    (lambda: RMSprop([_p()], alpha=1.5), ValueError, r"alpha: expected a number in \[0, 1\], got 1.5"),
    (lambda: SGD([]), ValueError, r"params: expected at least one Parameter, got an empty list"),
    (lambda: SGD([{"params": []}]), ValueError, r"params: expected at least one Parameter, got an empty list"),
    (lambda: SGD(_p()), TypeError, r"params: expected an iterable of Parameters or of dicts, got one Parameter"),
    (lambda: SGD([_p(), np.ones(3)]), TypeError, r"params\[1\]: expected a Parameter \(an hpcai Tensor\), got ndarray"),
    (lambda: SGD([_p(requires_grad=False)]), ValueError, r"params\[0\]: expected a Tensor that requires grad"),
    (lambda: SGD([_p() * 2]), ValueError, r"params\[0\]: expected a leaf Tensor"),
    (lambda: SGD([{"params": [_p()], "learning_rate": 0.1}]), ValueError, r"unknown option\(s\) \['learning_rate'\]"),
    (lambda: get_optimizer("adamm", [_p()]), ValueError, r"name: expected one of \['adagrad', 'adam', .*got 'adamm'"),
    (lambda: StepLR(SGD([_p()]), step_size=0), ValueError, r"step_size: expected an integer >= 1, got 0"),
    (lambda: ExponentialLR(SGD([_p()]), gamma=-1), ValueError, r"gamma: expected a finite number >= 0, got -1"),
    (lambda: StepLR("sgd", 3), TypeError, r"optimizer: expected an hpcai Optimizer, got str"),
    (lambda: LinearWarmup(SGD([_p()]), 3, after=StepLR(SGD([_p()]), 2)), ValueError,
     r"after: expected a schedule built on the same optimizer, got one on another optimizer"),
    (lambda: clip_grad_norm_([_p()], -1.0), ValueError, r"max_norm: expected a finite number >= 0, got -1.0"),
    (lambda: clip_grad_norm_([_p()], 1.0, norm_type=0), ValueError, r"norm_type: expected a number > 0"),
    (lambda: clip_grad_value_([np.ones(2)], 1.0), TypeError, r"params\[0\]: expected a Tensor, got ndarray"),
])
def test_bad_input_names_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_duplicate_parameter_is_refused():
    p = _p()
    with pytest.raises(ValueError, match=r"params\[0\]: this parameter appears more than once"):
        SGD([{"params": [p]}, {"params": [p]}])


def test_zero_grad():
    p = _p()
    opt = SGD([p], lr=0.1)
    p.grad = np.ones(2)
    opt.zero_grad(set_to_none=False)
    assert np.array_equal(p.grad, np.zeros(2))
    opt.zero_grad()
    assert p.grad is None
    opt.step()  # no grad: nothing happens
    assert np.array_equal(p.data, np.ones(2)) and opt.state == {}
