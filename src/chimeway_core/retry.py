"""Retry policy: how many attempts, and how long to wait between them.

:meth:`RetryPolicy.delay_for` is a pure function. For attempt ``n`` (the
attempt that just failed, counted from 1) the base delay is::

    base = min(max_delay, initial_delay * backoff_factor ** (n - 1))

and jitter adds up to ``jitter * base`` on top, drawn from the random source
passed in (``random.random`` by default), capped again at ``max_delay``::

    delay = min(max_delay, base * (1 + jitter * rand()))

When the provider sent a ``retry_after`` hint, it is honoured as it is, up to
``max_delay``, with no jitter. Tests switch backoff off with
:meth:`RetryPolicy.immediate`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import attrs

__all__ = ["RetryPolicy"]


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _non_negative_finite(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not _number(value) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


def _at_least_one(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int or value < 1:
        raise ValueError(f"{attribute.name} must be an int >= 1, got {value!r}")


def _factor(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not _number(value) or not math.isfinite(value) or value < 1:
        raise ValueError(f"{attribute.name} must be a finite number >= 1, got {value!r}")


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """When to give up and how long to wait before the next attempt.

    All durations are in seconds. A field out of range (``max_attempts`` not
    an int >= 1, a delay or ``jitter`` negative or not finite,
    ``backoff_factor`` below 1) raises :class:`ValueError` naming it.
    """

    max_attempts: int = attrs.field(default=5, validator=_at_least_one)
    initial_delay: float = attrs.field(default=1.0, validator=_non_negative_finite)
    backoff_factor: float = attrs.field(default=2.0, validator=_factor)
    max_delay: float = attrs.field(default=3600.0, validator=_non_negative_finite)
    jitter: float = attrs.field(default=0.1, validator=_non_negative_finite)

    @classmethod
    def immediate(cls, max_attempts: int = 5) -> RetryPolicy:
        """A policy with no delay and no jitter at all, for tests."""
        return cls(max_attempts=max_attempts, initial_delay=0.0, max_delay=0.0, jitter=0.0)

    def delay_for(
        self,
        attempt: int,
        retry_after: float | None = None,
        *,
        rand: Callable[[], float] = random.random,
    ) -> float:
        """Seconds to wait after failed attempt ``attempt`` (counted from 1).

        ``rand`` must return a float in ``[0, 1)``; pass a seeded source for
        deterministic delays. Raises :class:`ValueError` for ``attempt < 1``
        or a negative or non-finite ``retry_after``.
        """
        if type(attempt) is not int or attempt < 1:
            raise ValueError(f"attempt must be an int >= 1, got {attempt!r}")
        if retry_after is not None:
            if not math.isfinite(retry_after) or retry_after < 0:
                raise ValueError(f"retry_after must be finite and >= 0, got {retry_after!r}")
            return min(float(retry_after), self.max_delay)
        # Cap the exponent's growth before it overflows a float.
        exponent = min(attempt - 1, 1024)
        try:
            grown = self.initial_delay * self.backoff_factor**exponent
        except OverflowError:
            grown = math.inf
        base = min(self.max_delay, grown)
        if self.jitter:
            return min(self.max_delay, base * (1.0 + self.jitter * rand()))
        return base
