"""argparse types shared by every command line (``streamrec ...`` and ``python -m producer``).

>>> positive_int("3")
3
>>> positive_float("0")
Traceback (most recent call last):
...
argparse.ArgumentTypeError: expected a positive number, got '0'
>>> finite_float("nan")
Traceback (most recent call last):
...
argparse.ArgumentTypeError: expected a finite number, got 'nan'
"""

from __future__ import annotations

import argparse
import math

__all__ = ["positive_int", "positive_float", "finite_float"]


def positive_int(text: str) -> int:
    """argparse type of every count flag: an integer >= 1, or a one-line usage error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type of every rate and duration flag: a number > 0, or a one-line usage error."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not 0 < value < math.inf:  # NaN too
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def finite_float(text: str) -> float:
    """argparse type of a flag that takes any number (a timestamp, seconds): finite, or a
    one-line usage error (``nan`` and ``inf`` parse as floats but mean nothing there)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value
