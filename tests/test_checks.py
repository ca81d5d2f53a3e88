"""tflite_bench.checks: one message format, TypeError for a wrong type, ValueError for a wrong value."""

import numpy as np
import pytest

from tflite_bench.checks import check_bool, check_choice, check_fraction, check_int, check_number


def test_int_accepts_bounds_and_numpy_ints():
    assert check_int("api", "runs", 1, minimum=1) == 1
    assert check_int("api", "runs", np.int64(5), minimum=1, maximum=5) == 5
    assert check_int("api", "batch", None, minimum=1, allow_none=True) is None


@pytest.mark.parametrize(
    "value, error, message",
    [
        (0, ValueError, "api: runs must be an int >= 1, got 0."),
        (1.0, TypeError, "api: runs must be an int >= 1, got 1.0."),
        (True, TypeError, "api: runs must be an int >= 1, got True."),
        ("3", TypeError, "api: runs must be an int >= 1, got '3'."),
        (None, TypeError, "api: runs must be an int >= 1, got None."),
    ],
)
def test_int_refusals(value, error, message):
    with pytest.raises(error) as info:
        check_int("api", "runs", value, minimum=1)
    assert str(info.value) == message


def test_fraction_ends():
    assert check_fraction("f", "sparsity", 0) == 0.0
    with pytest.raises(ValueError, match=r"f: sparsity must be a number in \[0, 1\), got 1.0"):
        check_fraction("f", "sparsity", 1.0)
    assert check_fraction("f", "fraction", 1.0, include_one=True) == 1.0
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        check_fraction("f", "fraction", 0.0, include_zero=False, include_one=True)
    with pytest.raises(ValueError):
        check_fraction("f", "sparsity", float("nan"))
    with pytest.raises(TypeError):
        check_fraction("f", "sparsity", "0.5")


def test_number_bounds():
    assert check_number("f", "x", 2, minimum=0) == 2.0
    with pytest.raises(ValueError, match="must be a number > 0, got 0"):
        check_number("f", "x", 0, minimum=0, inclusive=(False, True))
    with pytest.raises(ValueError, match="finite"):
        check_number("f", "x", float("inf"))


def test_bool_and_choice():
    assert check_bool("f", "flag", np.bool_(True)) is True
    with pytest.raises(TypeError, match="f: flag must be True or False, got 1."):
        check_bool("f", "flag", 1)
    assert check_choice("f", "mode", "raw", ("raw", "gzip")) == "raw"
    with pytest.raises(ValueError, match="f: mode must be one of 'raw', 'gzip', got 'zip'."):
        check_choice("f", "mode", "zip", ("raw", "gzip"))
    with pytest.raises(TypeError):
        check_choice("f", "mode", 3, ("raw", "gzip"))
