"""Checks of the numbers and queue names given to constructors and entry points, in one wording.

A value of the wrong kind is a :class:`TypeError`, a number out of range a
:class:`ValueError`; both name the argument. ``bool`` is never a number here
(``True`` seconds is a mistake, not one second). Non-finite seconds are
refused because every one of them ends up in a ``timedelta``, a lock wait or
an integer timeout, where infinity raises far from the call that gave it.
"""

from __future__ import annotations

import math

__all__ = ["is_number", "queue_or", "seconds", "whole"]


def is_number(value: object) -> bool:
    """Whether ``value`` is an ``int`` or a ``float`` (``bool`` excluded)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def seconds(name: str, value: object, *, positive: bool = False) -> float:
    """``value`` as a float number of seconds: finite and >= 0, or > 0 if ``positive``."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a finite number of seconds {bound}, got {value!r}")
    return float(value)


def queue_or(queue: object, default: str) -> str:
    """The queue named ``queue``, a non-empty ``str``, or ``default`` for ``None``.

    Anything else is a :class:`ValueError`, whatever its kind: the backends' one wording.
    """
    if queue is None:
        return default
    if not isinstance(queue, str) or not queue:
        raise ValueError(f"queue must be a non-empty str or None, got {queue!r}")
    return queue


def whole(name: str, value: object, *, minimum: int) -> int:
    """``value`` itself, which must be an ``int`` (``bool`` excluded) >= ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value
