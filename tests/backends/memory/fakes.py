"""A scripted performer for the memory backend's tests."""

from __future__ import annotations

import threading
from collections import defaultdict, deque
from collections.abc import Callable
from datetime import datetime, timedelta
from uuid import UUID

from chimeway_core.clock import Clock
from chimeway_core.jobs import JobKind, JobResult

#: One scripted step: a JobKind with a delay from now, or an exception to raise.
Step = tuple[JobKind, timedelta] | BaseException


class ScriptedPerformer:
    """Returns scripted results per delivery (ACK once the script runs out); thread-safe."""

    def __init__(self, clock: Clock, scripts: dict[UUID, list[Step]] | None = None) -> None:
        self.clock = clock
        self.scripts: defaultdict[UUID, deque[Step]] = defaultdict(deque)
        for delivery_id, steps in (scripts or {}).items():
            self.scripts[delivery_id].extend(steps)
        self.calls: list[tuple[UUID, datetime]] = []
        self.before_return: Callable[[UUID], object] | None = None
        self._lock = threading.Lock()

    def perform(self, delivery_id: UUID) -> JobResult:
        """Record the call and play the next scripted step for the delivery."""
        now = self.clock.now()
        with self._lock:
            self.calls.append((delivery_id, now))
            step = self.scripts[delivery_id].popleft() if self.scripts[delivery_id] else None
        if self.before_return is not None:
            self.before_return(delivery_id)
        if isinstance(step, BaseException):
            raise step
        if step is None or step[0] is JobKind.ACK:
            return JobResult(delivery_id=delivery_id, kind=JobKind.ACK)
        kind, delay = step
        return JobResult(delivery_id=delivery_id, kind=kind, run_at=now + delay)

    @property
    def called_ids(self) -> list[UUID]:
        """The delivery ids performed, in call order."""
        with self._lock:
            return [delivery_id for delivery_id, _ in self.calls]
