"""Argument checks shared by `tflite_bench` and `keras_compress`.

One message format and one rule everywhere: a value of the wrong *type*
raises `TypeError`, a value of the right type outside what is accepted raises
`ValueError`. Every message names where it was raised, the argument, what is
accepted and what was given:

    prune_low_magnitude: frequency must be an int >= 1, got 0.

This module imports only the standard library, so both packages (and
`tflite_bench` without Keras or TensorFlow) can use it.
"""

import math
import numbers

__all__ = ["check_int", "check_fraction", "check_number", "check_bool", "check_choice", "describe"]


def _where(api, name):
    return f"{api}: {name}" if api else name


def describe(value):
    """`repr` of a value, shortened so a message stays one readable line."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _accepted(kind, minimum, maximum, inclusive, allow_none):
    """"an int >= 1", "a number in [0, 1)", ..., with " or None" when allowed."""
    low, high = (f"{b:g}" if b is not None else None for b in (minimum, maximum))
    if low is not None and high is not None:
        text = f"{kind} in {'[' if inclusive[0] else '('}{low}, {high}{']' if inclusive[1] else ')'}"
    elif low is not None:
        text = f"{kind} {'>=' if inclusive[0] else '>'} {low}"
    elif high is not None:
        text = f"{kind} {'<=' if inclusive[1] else '<'} {high}"
    else:
        text = kind
    return text + (" or None" if allow_none else "")


def _outside(value, minimum, maximum, inclusive):
    if minimum is not None and (value < minimum if inclusive[0] else value <= minimum):
        return True
    return maximum is not None and (value > maximum if inclusive[1] else value >= maximum)


def check_int(api, name, value, minimum=None, maximum=None, allow_none=False):
    """Returns `value` (an int) if `minimum <= value <= maximum`, else raises.

    `allow_none=True` accepts None as well (and returns it)."""
    if allow_none and value is None:
        return None
    message = (f"{_where(api, name)} must be {_accepted('an int', minimum, maximum, (True, True), allow_none)}, "
               f"got {describe(value)}.")
    if not _is_int(value):
        raise TypeError(message)
    if _outside(value, minimum, maximum, (True, True)):
        raise ValueError(message)
    return int(value)


def check_number(api, name, value, minimum=None, maximum=None, inclusive=(True, True), allow_none=False):
    """Returns `value` as a float if it is a finite real number within the
    bounds (`inclusive` says, for (minimum, maximum), whether each end is
    accepted), else raises."""
    if allow_none and value is None:
        return None
    kind = "a number" if minimum is not None or maximum is not None else "a finite number"
    message = (f"{_where(api, name)} must be {_accepted(kind, minimum, maximum, inclusive, allow_none)}, "
               f"got {describe(value)}.")
    if not _is_real(value):
        raise TypeError(message)
    value = float(value)
    if math.isnan(value) or math.isinf(value) or _outside(value, minimum, maximum, inclusive):
        raise ValueError(message)
    return value


def check_fraction(api, name, value, include_zero=True, include_one=False, allow_none=False):
    """Returns `value` as a float if it is a fraction in [0, 1) (the ends as
    `include_zero` / `include_one` say), else raises."""
    return check_number(api, name, value, 0.0, 1.0, inclusive=(include_zero, include_one), allow_none=allow_none)


def check_bool(api, name, value):
    """Returns `value` if it is a bool (numpy's included), else raises TypeError."""
    if isinstance(value, bool) or type(value).__name__ in ("bool_", "bool"):
        return bool(value)
    raise TypeError(f"{_where(api, name)} must be True or False, got {describe(value)}.")


def check_choice(api, name, value, choices):
    """Returns `value` if it is one of `choices` (strings), else raises: a
    TypeError for a non-string, a ValueError naming the accepted values for an
    unknown one."""
    accepted = ", ".join(repr(c) for c in choices)
    message = f"{_where(api, name)} must be one of {accepted}, got {describe(value)}."
    if not isinstance(value, str):
        raise TypeError(message)
    if value not in choices:
        raise ValueError(message)
    return value
