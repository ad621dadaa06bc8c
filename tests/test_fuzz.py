"""Fuzzing every application's Config and every nn / optim constructor with nonsense (hypothesis, fixed
budget): each value is either refused with a ValueError/TypeError that names the field or argument, or it is
a value of the declared type, finite and in the declared range -- never a raw error from inside numpy, h5py
or PIL, never silent acceptance. Accepted layer and optimizer settings must also give finite results.
"""
import inspect
import math
import numbers
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcai import Tensor, nn, optim
from hpcai.apps import APPS, config_fields, make_config

FUZZ = settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))

NONSENSE = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
    st.sampled_from([0, 1, -1, 2**31, 2**63, 10**20]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.5, -0.0, 1e-320, 1e308, 2.5, 1e20]),
    st.text(max_size=6), st.sampled_from(["abc", "", "1e20", "nan", "fp32", "adam", "sgd", "mlp"]),
    st.lists(st.integers(), max_size=2), st.just({"a": 1}), st.just(object()), st.just(1 + 2j),
    st.just(np.float64("nan")), st.just(np.int64(3)), st.just(np.array([1, 2])))


def _named(error: BaseException, name: str) -> bool:
    return str(error).startswith(f"{name}:") or f" {name}" in str(error) or f"{name} " in str(error)


def _declared_ok(spec, value) -> bool:
    """The independent oracle: is ``value`` something this field's declaration allows?"""
    if value is None:
        return spec.optional
    if spec.choices is not None:
        return isinstance(value, str) and value in spec.choices
    if spec.path or spec.kind is str:
        return isinstance(value, str)
    if isinstance(value, (bool, np.bool_)):
        return spec.kind is bool
    if spec.kind is int and not isinstance(value, numbers.Integral):
        return False
    if not isinstance(value, numbers.Real) or not math.isfinite(value):
        return False
    return (spec.low is None or value >= spec.low) and (spec.high is None or value <= spec.high)


@pytest.mark.parametrize("app", sorted(APPS))
def test_every_numeric_field_declares_its_bounds_and_help(app):
    for spec in config_fields(APPS[app].config):
        if spec.kind in (int, float) and spec.choices is None:
            assert spec.low is not None and spec.high is not None, f"{app}.{spec.name} has no upper bound"
            assert f"{spec.low:g}" in spec.help and f"{spec.high:g}" in spec.help, spec.help


def _app_case(app):
    specs = {s.name: s for s in config_fields(APPS[app].config)}

    @FUZZ
    @given(name=st.sampled_from(sorted(specs)), value=NONSENSE)
    def case(name, value):
        try:
            make_config(app, {name: value})
        except (ValueError, TypeError) as e:
            assert _named(e, name), f"{app}.{name}={value!r}: {type(e).__name__}: {e}"
            return
        assert _declared_ok(specs[name], value), f"{app}.{name} accepted {value!r}"
    return case


@pytest.mark.parametrize("app", sorted(APPS))
def test_config_fields_refuse_nonsense_naming_the_field(app):
    _app_case(app)()


# -- nn layers and optimizers ----------------------------------------------------------------------------
LAYERS = {  # the required arguments of each layer, and an input it takes
    nn.Linear: ((4, 3), (2, 4)), nn.Conv2d: ((2, 3, 3), (1, 2, 5, 5)),
    nn.ConvTranspose2d: ((2, 3, 3), (1, 2, 4, 4)), nn.MaxPool2d: ((2,), (1, 2, 4, 4)),
    nn.AvgPool2d: ((2,), (1, 2, 4, 4)), nn.BatchNorm1d: ((3,), (4, 3)), nn.BatchNorm2d: ((2,), (2, 2, 3, 3)),
    nn.LayerNorm: ((3,), (2, 3)), nn.Dropout: ((), (2, 3)),
    nn.GELU: ((), (2, 3)), nn.Softplus: ((), (2, 3)), nn.LeakyReLU: ((), (2, 3)),
    nn.ResidualBlock: ((2,), (1, 2, 4, 4)),
}
SKIP_ARGS = {"rng", "init", "dtype"}  # covered by the bad-input tests: a Generator/seed, a callable, a dtype


def _tunable(cls):
    """The constructor arguments with a number, bool or str default: the ones to fuzz."""
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in params if p.name not in SKIP_ARGS and p.default is not inspect.Parameter.empty
            and isinstance(p.default, (numbers.Number, str))}


def _acceptable(default, value) -> bool:
    """A value of the default's kind (bool for bool; a finite real for numbers; a str for str)."""
    if isinstance(default, bool):
        return isinstance(value, (bool, np.bool_))
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        return False
    return isinstance(value, numbers.Integral) or not isinstance(default, numbers.Integral)


@pytest.mark.parametrize("cls", list(LAYERS), ids=lambda c: c.__name__)
def test_layer_arguments_refuse_nonsense_and_accepted_ones_give_finite_outputs(cls):
    args, shape = LAYERS[cls]
    tunable = _tunable(cls)
    if not tunable:
        pytest.skip(f"{cls.__name__} takes no scalar settings")
    x = Tensor(np.random.default_rng(0).standard_normal(shape).astype(np.float32))

    @settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(name=st.sampled_from(sorted(tunable)), value=NONSENSE)
    def case(name, value):
        try:
            layer = cls(*args, **{name: value})
        except (ValueError, TypeError) as e:
            assert _named(e, name), f"{cls.__name__}({name}={value!r}): {type(e).__name__}: {e}"
            return
        assert _acceptable(tunable[name], value), f"{cls.__name__} accepted {name}={value!r}"
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy overflow/invalid warnings count as failures
            try:
                out = layer(x)
            except (ValueError, TypeError) as e:  # e.g. a kernel larger than the input: named by the op
                assert "numpy" not in type(e).__module__, e
                return
        assert np.isfinite(out.data).all(), f"{cls.__name__}({name}={value!r}) gave non-finite output"
    case()


@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
def test_optimizer_arguments_refuse_nonsense_and_one_step_stays_finite(name):
    make = optim.OPTIMIZERS[name]
    cls = make.func if hasattr(make, "func") else make
    tunable = _tunable(cls)
    tunable.pop("nesterov", None) if name != "sgd" else None

    @settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(arg=st.sampled_from(sorted(tunable)), value=NONSENSE)
    def case(arg, value):
        w = nn.Parameter(np.ones((3, 2), np.float32))
        try:
            opt = make([w], **{arg: value})
        except (ValueError, TypeError) as e:
            assert _named(e, arg), f"{name}({arg}={value!r}): {type(e).__name__}: {e}"
            return
        assert _acceptable(tunable[arg], value), f"{name} accepted {arg}={value!r}"
        w.grad = np.full((3, 2), 0.5, np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            opt.step()
        assert np.isfinite(w.data).all(), f"{name}({arg}={value!r}): weights not finite after one step"
    case()
