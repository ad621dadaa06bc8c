"""hpcai.checks, the one argument-check module: what it accepts, what it refuses, and how it says so."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from hpcai import checks


@given(st.floats(allow_nan=False, allow_infinity=False), st.floats(-1e6, 1e6), st.floats(0, 1e6))
def test_number_accepts_exactly_the_interval(value, low, width):
    high = low + width
    inside = low <= value <= high
    if inside:
        assert checks.number("x", value, low, high) == value
    else:
        with pytest.raises(ValueError, match=r"^x: expected a number in \["):
            checks.number("x", value, low, high)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, True, np.bool_(False), "1.0", None, [1.0], 1j])
def test_number_refuses_what_is_not_a_finite_real(bad):
    with pytest.raises(ValueError, match=r"^lr: expected a finite number >= 0, got "):
        checks.number("lr", bad, 0.0)


def test_open_ends_are_open():
    assert checks.number("p", 0.0, 0.0, 1.0, high_open=True) == 0.0
    for value, kw in [(1.0, {"high_open": True}), (0.0, {"low_open": True})]:
        with pytest.raises(ValueError, match=r"p: expected a number in [\[(]0, 1[\])]"):
            checks.number("p", value, 0.0, 1.0, **kw)
    with pytest.raises(ValueError, match="delta: expected a finite number > 0, got 0"):
        checks.number("delta", 0, 0.0, low_open=True)


@given(st.integers(-10 ** 6, 10 ** 6))
def test_integer_takes_ints_and_numpy_ints(value):
    assert checks.integer("n", value) == value
    assert checks.integer("n", np.int32(value % 1000)) == value % 1000
    assert type(checks.integer("n", np.int64(value))) is int


@pytest.mark.parametrize("bad", [2.0, True, "2", None, np.float64(2)])
def test_integer_refuses_floats_bools_and_text(bad):
    with pytest.raises(ValueError, match=r"^steps: expected an integer >= 1, got "):
        checks.integer("steps", bad, 1)


def test_integer_bounds_are_named():
    with pytest.raises(ValueError, match=r"tag: expected an integer in \[0, 32767\], got 40000"):
        checks.integer("tag", 40000, 0, 32767)
    with pytest.raises(ValueError, match="n: expected an integer <= 3, got 4"):
        checks.integer("n", 4, high=3)


def test_choice_rank_timeout_text():
    assert checks.choice("lattice", "bcc", ("sc", "bcc")) == "bcc"
    with pytest.raises(ValueError, match="lattice: expected one of 'sc', 'bcc', got 'hcp'"):
        checks.choice("lattice", "hcp", ("sc", "bcc"))
    with pytest.raises(ValueError, match="lattice: expected one of"):
        checks.choice("lattice", ["sc"], ("sc", "bcc"))  # unhashable: refused, not a TypeError from `in`
    assert checks.rank("dest", np.int64(3), 4) == 3
    with pytest.raises(ValueError, match=r"dest: expected a rank in \[0, 4\), got 4"):
        checks.rank("dest", 4, 4)
    assert checks.timeout("timeout", None) is None and checks.timeout("timeout", 2) == 2.0
    with pytest.raises(ValueError, match="timeout: expected None or a number of seconds >= 0, got -1"):
        checks.timeout("timeout", -1)
    with pytest.raises(ValueError, match="timeout: expected None or a number of seconds"):
        checks.timeout("timeout", math.nan)
    assert checks.text("name", "x") == "x"
    with pytest.raises(TypeError, match="name: expected a str, got int"):
        checks.text("name", 3)
    with pytest.raises(ValueError, match="name: expected a non-empty str"):
        checks.text("name", "")


def test_array_checks_shape_kind_and_finiteness():
    a = np.zeros((2, 3))
    assert checks.array("x", a, ndim=2, shape=(None, 3), finite=True) is a
    with pytest.raises(TypeError, match="x: expected an array, got list"):
        checks.array("x", [1, 2])
    with pytest.raises(ValueError, match=r"x: expected an array of shape \(any, 4\), got \(2, 3\)"):
        checks.array("x", a, shape=(None, 4))
    with pytest.raises(ValueError, match="x: expected an array with 3 dimensions"):
        checks.array("x", a, ndim=3)
    with pytest.raises(ValueError, match="x: expected an array of dtype kind in 'iu', got dtype float64"):
        checks.array("x", a, kinds="iu")
    b = a.copy()
    b[1, 2] = np.nan
    with pytest.raises(ValueError, match="x: expected finite values, found NaN or infinity"):
        checks.array("x", b, finite=True)


def test_long_values_are_shortened_in_messages():
    with pytest.raises(ValueError) as e:
        checks.integer("n", "x" * 500)
    assert len(str(e.value)) < 150 and str(e.value).endswith("...")


def test_flag_pair_and_path():
    assert checks.flag("f", True) is True and checks.flag("f", np.bool_(False)) is False
    for bad in (0, 1, "yes", None, 1.0):
        with pytest.raises(ValueError, match="^f: expected True or False"):
            checks.flag("f", bad)
    assert checks.pair("k", 3) == (3, 3) and checks.pair("p", [0, 2], 0) == (0, 2)
    for bad in (0, (1, 0), (1, 2, 3), True, (1.5, 2), "3"):
        with pytest.raises(ValueError, match="^k: expected a positive int or a pair of them"):
            checks.pair("k", bad)
    assert checks.path("d", "out") == "out" and checks.path("d", __import__("pathlib").Path("a")) == "a"
    for bad in ("", 5, b"out", ["a"]):
        with pytest.raises(ValueError, match="^d: expected a file or folder name"):
            checks.path("d", bad)


def test_choice_refuses_what_cannot_be_compared():
    for bad in (["adam"], {"adam": 1}, np.array(["adam", "sgd"])):
        with pytest.raises(ValueError, match="^optimizer: expected one of 'adam', 'sgd'"):
            checks.choice("optimizer", bad, ("adam", "sgd"))
