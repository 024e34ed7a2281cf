"""The contract between the engine and a queue backend.

A backend does two things (DESIGN.md, "Backends"): it enqueues a delivery id,
now or at a time, under a job id derived from the delivery so a duplicate
enqueue makes no second job; and it runs a worker that calls
``Chimeway.perform(delivery_id)`` and translates the :class:`JobResult` into
its own idiom:

- ``ACK``: return normally; the job is done.
- ``RETRY``: run the same delivery again at ``run_at`` (the engine's backoff;
  the ledger, not the queue's retry counter, owns the attempt number).
- ``DEFER``: a policy or ``scheduled_at`` pushed the delivery later; run it
  again at ``run_at``. It consumed no attempt.

:class:`Backend` (the base class every adapter extends, re-exported here
from :mod:`chimeway_core.backend`) has a default queue and may have others,
by name: the engine asks for ``queue=`` for a delivery whose channel it
routes (``Chimeway(routes=...)``); an object that is no subclass and whose
methods take no ``queue`` works until routes are used. A ``RETRY`` or
``DEFER`` result carries the queue its next run belongs on in
:attr:`JobResult.queue`.

``UnhandledOutcomeError`` raised by ``perform`` must propagate into the
queue's failure record; the engine has already scheduled the next run when
retries remain (``run_at`` on the exception), so the adapter only needs to
honour it the way it honours ``RETRY``.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Protocol, runtime_checkable
from uuid import UUID

import attrs

from chimeway_core.backend import Backend, Enqueued
from chimeway_core.errors import InvalidJobError

__all__ = [
    "Backend",
    "Enqueued",
    "JobKind",
    "JobResult",
    "Performer",
    "job_id_for",
    "parse_delivery_id",
]


class JobKind(enum.StrEnum):
    """What the queue does with the job that just ran."""

    ACK = "ack"
    RETRY = "retry"
    DEFER = "defer"


@attrs.frozen(kw_only=True)
class JobResult:
    """What ``perform()`` tells the backend, plus why (for logs and the demo)."""

    delivery_id: UUID
    kind: JobKind
    run_at: datetime | None = None
    detail: str = ""
    queue: str | None = None
    """The queue the next run belongs on (its channel's route); ``None``: the default."""

    def __attrs_post_init__(self) -> None:
        if (self.kind is JobKind.ACK) != (self.run_at is None):
            raise ValueError(f"{self.kind.value} result needs run_at exactly when it is not ack")


@runtime_checkable
class Performer(Protocol):
    """What a backend's worker calls: the engine's one entry point."""

    def perform(self, delivery_id: UUID) -> JobResult:
        """Run one job for ``delivery_id``; may raise ``UnhandledOutcomeError``."""
        ...


_JOB_ID_PREFIX = "chimeway-delivery-"


def job_id_for(delivery_id: UUID) -> str:
    """The queue job id for a delivery: stable, so brokers can dedupe on it."""
    return f"{_JOB_ID_PREFIX}{delivery_id}"


def parse_delivery_id(raw: object) -> UUID:
    """Validate a job argument as a delivery id, or raise :class:`InvalidJobError`.

    Only a canonical UUID string is accepted: job arguments are ids only.
    """
    if not isinstance(raw, str) or len(raw) != 36:
        raise InvalidJobError(raw)
    try:
        parsed = uuid.UUID(raw)
    except ValueError:
        raise InvalidJobError(raw) from None
    if str(parsed) != raw.lower():
        raise InvalidJobError(raw)
    return parsed
