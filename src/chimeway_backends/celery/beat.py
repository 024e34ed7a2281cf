"""Relay and rescue on ``celery beat``: :func:`beat_schedule` and the tasks' names.

Every :class:`~chimeway_backends.celery.CeleryBackend` registers, besides
``chimeway.deliver``, two tasks on its app that take no argument:
``chimeway.relay`` (:meth:`Chimeway.relay <chimeway_core.engine.Chimeway.relay>`:
outbox rows whose hand-over failed go to the queue) and ``chimeway.rescue``
(:meth:`Chimeway.rescue <chimeway_core.engine.Chimeway.rescue>`: dead
workers' attempts resolved, stranded deliveries requeued, the outbox
relayed). Both are safe on several workers at once, as the engine's relay
and rescue are. :func:`beat_schedule` returns the entries that make
``celery beat`` send them periodically, for an app whose workers do not run
the rescuer on their own timer (``CeleryBackend(rescue_interval=None)``).

This module imports nothing of chimeway's core, so an app module that builds
its ``beat_schedule`` with it stays as quick to import as before.
"""

from __future__ import annotations

import math
from typing import Any, Final

__all__ = ["RELAY_TASK", "RESCUE_TASK", "beat_schedule"]

#: The task that relays the outbox (``engine.relay()``).
RELAY_TASK: Final = "chimeway.relay"
#: The task that runs one rescue pass (``engine.rescue()``, which relays too).
RESCUE_TASK: Final = "chimeway.rescue"


def _every(name: str, value: object) -> float:
    # The wording of chimeway_core._checks.seconds, which this light module does not import.
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


def beat_schedule(
    queue: str = "chimeway",
    *,
    rescue_every: float | None = 30.0,
    relay_every: float | None = None,
) -> dict[str, dict[str, Any]]:
    """Entries for Celery's ``beat_schedule`` that run chimeway's rescue (and relay) periodically.

    ``chimeway.rescue`` every ``rescue_every`` seconds, and, when
    ``relay_every`` is given, ``chimeway.relay`` that often too (a rescue
    relays as well: a separate relay only hands failed hand-overs over
    sooner). ``None`` leaves an entry out. Each message is sent to ``queue``
    (the backend's ``queue``: the workers consuming it have the engine) and
    expires after one period, so a tick no worker took in time is dropped
    rather than run late after the next. Add them to the app's schedule::

        app.conf.beat_schedule = {**beat_schedule("notifications"), **your_entries}

    ``queue`` must be a non-empty ``str`` and each period a finite number of
    seconds > 0, else :class:`ValueError` (:class:`TypeError` for a period
    that is no number).
    """
    if not isinstance(queue, str) or not queue:
        raise ValueError(f"queue must be a non-empty str, got {queue!r}")
    entries: dict[str, dict[str, Any]] = {}
    for task, name, every in (
        (RESCUE_TASK, "rescue_every", rescue_every),
        (RELAY_TASK, "relay_every", relay_every),
    ):
        if every is not None:
            period = _every(name, every)
            entries[task] = {
                "task": task,
                "schedule": period,
                "options": {"queue": queue, "expires": period},
            }
    return entries
