"""Clocks: where chimeway reads the time.

Every component takes a :class:`Clock` instead of calling ``datetime.now``,
so tests can drive time with :class:`VirtualClock`. All times are tz-aware UTC.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock", "VirtualClock", "ensure_aware"]


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
    """A clock that only moves when told to. Thread-safe."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = ensure_aware(start, "start") if start else datetime(2030, 1, 1, tzinfo=UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        """Return the virtual time."""
        with self._lock:
            return self._now

    def advance(self, seconds: float | timedelta) -> datetime:
        """Move time forward (never backward) and return the new time."""
        step = seconds if isinstance(seconds, timedelta) else timedelta(seconds=seconds)
        if step < timedelta(0):
            raise ValueError(f"a clock cannot go backward, got {step}")
        with self._lock:
            self._now += step
            return self._now

    def set(self, when: datetime) -> None:
        """Jump to ``when`` if it is later than now."""
        when = ensure_aware(when, "when")
        with self._lock:
            if when < self._now:
                raise ValueError(f"a clock cannot go backward: {when} < {self._now}")
            self._now = when


def ensure_aware(value: datetime, name: str) -> datetime:
    """Return ``value`` in UTC; raise :class:`ValueError` naming ``name`` if naive."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got naive {value!r}")
    return value.astimezone(UTC)
