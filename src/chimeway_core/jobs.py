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

A backend has a default queue and may have others, by name: the engine
passes ``queue=`` to :meth:`Backend.enqueue` and :meth:`Backend.enqueue_many`
for a delivery whose channel it routes (``Chimeway(routes=...)``), and never
otherwise, so a backend that has only one queue needs no ``queue`` parameter
until routes are used. A ``RETRY`` or ``DEFER`` result carries the queue its
next run belongs on in :attr:`JobResult.queue`.

``UnhandledOutcomeError`` raised by ``perform`` must propagate into the
queue's failure record; the engine has already scheduled the next run when
retries remain (``run_at`` on the exception), so the adapter only needs to
honour it the way it honours ``RETRY``.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable
from uuid import UUID

import attrs

from chimeway_core.errors import InvalidJobError

__all__ = ["Backend", "JobKind", "JobResult", "Performer", "job_id_for", "parse_delivery_id"]


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
class Backend(Protocol):
    """Where the engine hands delivery ids to a job queue.

    A backend may also define ``interrupts``: a tuple of the exception types
    its queue raises *inside* a running job to stop it (Celery's soft time
    limit). The engine lets those propagate out of the channel call without
    recording an outcome — the request may have reached the provider — so the
    attempt stays in flight and the rescuer resolves it as ``unknown``, as
    after a worker's death.
    """

    def enqueue(
        self, delivery_id: UUID, *, at: datetime | None = None, queue: str | None = None
    ) -> None:
        """Queue a job for ``delivery_id`` on ``queue`` (its default if ``None``), now or at ``at``.

        A backend should not double a pending job for the same delivery where
        its queue allows (memory and RQ do not; Celery cannot tell), whatever
        queue it is asked for. Nothing depends on it: a duplicate job finds
        the delivery terminal, leased or not yet due and acknowledges without
        calling the channel.
        """
        ...

    def enqueue_many(self, delivery_ids: Sequence[UUID], *, queue: str | None = None) -> None:
        """Queue jobs for several deliveries on ``queue``, due now, in few round trips."""
        ...


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
