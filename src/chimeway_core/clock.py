"""Clocks: where chimeway reads the time.

Every component takes a :class:`Clock` instead of calling ``datetime.now``,
so tests can drive time with :class:`VirtualClock`. All times are tz-aware UTC.
"""

from __future__ import annotations

import math
import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

from chimeway_core._checks import is_number

__all__ = ["Clock", "SystemClock", "VirtualClock", "ensure_aware"]

_LAST = datetime.max.replace(tzinfo=UTC)


@runtime_checkable
class Clock(Protocol):
    """A source of the current time."""

    def now(self) -> datetime:
        """Return the current time, tz-aware, in UTC."""
        ...


class SystemClock:
    """The wall clock."""

    def now(self) -> datetime:
        """Return ``datetime.now(UTC)``."""
        return datetime.now(UTC)


class VirtualClock:
    """A clock that only moves when told to. Thread-safe.

    It starts at ``start`` (a tz-aware datetime; 2030-01-01 UTC if omitted).
    Bad input is refused where it is given and leaves the time unchanged:
    :class:`TypeError` for a value of the wrong kind, :class:`ValueError` for
    one out of range, both naming the argument.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = (
            datetime(2030, 1, 1, tzinfo=UTC) if start is None else ensure_aware(start, "start")
        )
        self._lock = threading.Lock()

    def now(self) -> datetime:
        """Return the virtual time."""
        with self._lock:
            return self._now

    def advance(self, seconds: float | timedelta) -> datetime:
        """Move time forward by ``seconds`` and return the new time.

        ``seconds`` is a number (``int`` or ``float``, not ``bool``) or a
        :class:`~datetime.timedelta`; anything else is a :class:`TypeError`.
        A negative or non-finite step, or one that would take the clock past
        the last time a ``datetime`` can hold, is a :class:`ValueError`.
        """
        if isinstance(seconds, timedelta):
            step = seconds
        elif not is_number(seconds):
            raise TypeError(
                f"seconds must be a number of seconds or a timedelta, not {type(seconds).__name__}"
            )
        elif not math.isfinite(seconds):
            raise ValueError(f"seconds must be a finite number of seconds, got {seconds!r}")
        else:
            try:
                step = timedelta(seconds=seconds)
            except OverflowError:
                step = timedelta.max  # past any datetime: refused below, in one wording
        if step < timedelta(0):
            raise ValueError(f"a clock cannot go backward, got seconds={seconds!r}")
        with self._lock:
            if step > _LAST - self._now:
                raise ValueError(
                    f"seconds={seconds!r} takes the clock from {self._now} past the last "
                    f"time a datetime can hold ({_LAST.date()})"
                )
            self._now += step
            return self._now

    def set(self, when: datetime) -> None:
        """Jump to ``when``, a tz-aware datetime no earlier than now (else refused, as above)."""
        when = ensure_aware(when, "when")
        with self._lock:
            if when < self._now:
                raise ValueError(f"a clock cannot go backward: {when} < {self._now}")
            self._now = when


def ensure_aware(value: datetime, name: str) -> datetime:
    """Return ``value`` in UTC, raising an error that names ``name`` for anything else.

    A value that is not a :class:`~datetime.datetime` (a ``date``, a string)
    is a :class:`TypeError`; a naive datetime a :class:`ValueError`.
    """
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a timezone-aware datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got naive {value!r}")
    return value.astimezone(UTC)
