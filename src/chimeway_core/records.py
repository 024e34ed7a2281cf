"""Frozen values read from the ledger: a delivery, its attempts, its journal.

These are what the store returns and what the engine, the command line and the
testing kit pass around. They are snapshots: changing a delivery goes through
the store, which returns a new snapshot.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final
from uuid import UUID

import attrs

from chimeway_core.outcomes import Outcome
from chimeway_core.states import TERMINAL_STATUSES, DeliveryStatus

__all__ = [
    "Attempt",
    "Claim",
    "Delivery",
    "DeliveryHistory",
    "JournalEntry",
    "JournalKind",
    "LedgerGauges",
    "NewDelivery",
    "Resent",
    "resend_key",
    "resent_from",
]

#: The prefix of a resend's idempotency key; the original's id follows it.
RESEND_KEY_PREFIX: Final = "chimeway.resend:"


@attrs.frozen(kw_only=True)
class Delivery:
    """One notification to one recipient over one channel, as the ledger holds it."""

    id: UUID
    channel: str
    recipient: str
    payload: Any
    notification_key: str | None
    idempotency_key: str
    status: DeliveryStatus
    reason: str | None
    attempt_count: int
    max_attempts: int
    scheduled_at: datetime
    expires_at: datetime | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    version: int
    deferral_count: int
    metadata: Mapping[str, Any]
    created_at: datetime
    updated_at: datetime
    trace_context: str | None = attrs.field(default=None, eq=False, repr=False)
    """The trace ``notify()`` ran in, as W3C trace context (``traceparent``, then
    ``;`` and the ``tracestate`` if any), or ``None`` when no tracing was set up.

    Written by the engine from its telemetry (see docs/telemetry.md), never
    compared: a repeat of a request in another trace is the same delivery.
    """
    found_existing: bool = attrs.field(default=False, eq=False, repr=False)
    """Whether ``notify()`` found this delivery already recorded under its key and made none.

    ``True`` only on what ``notify()`` and ``notify_many()`` return for a
    repeat of a request (the same ``(channel, idempotency_key)``): nothing
    was written or queued for it. ``False`` on a delivery they created, and
    on every delivery read from the ledger. Not part of equality: the
    delivery is the same either way.
    """

    @property
    def is_terminal(self) -> bool:
        """Whether the status is one no event can leave."""
        return self.status in TERMINAL_STATUSES

    def is_due(self, now: datetime) -> bool:
        """Whether ``scheduled_at`` (not before) has passed at ``now``."""
        return self.scheduled_at <= now


@attrs.frozen(kw_only=True)
class Attempt:
    """One call of a channel for a delivery.

    Written before the call (``outcome is None``: in flight) and completed
    after it. ``number`` is contiguous from 1 per delivery.
    """

    delivery_id: UUID
    number: int
    started_at: datetime
    finished_at: datetime | None
    outcome: Outcome | None
    error_class: str | None
    provider_response: Mapping[str, Any] | None
    error: str | None
    worker: str | None

    @property
    def in_flight(self) -> bool:
        """Whether the attempt was started and never completed."""
        return self.outcome is None


class JournalKind(enum.StrEnum):
    """What a journal entry records."""

    CREATED = "created"
    TRANSITION = "transition"
    DEFERRED = "deferred"
    RESCUED = "rescued"
    RESENT = "resent"
    """The delivery was resent; ``detail["as"]`` is the id of its copy."""
    REVEALED = "revealed"
    """An operator was shown the payload; ``detail["by"]`` says who."""


@attrs.frozen(kw_only=True)
class JournalEntry:
    """One line of a delivery's history: a status change or a policy decision."""

    delivery_id: UUID
    at: datetime
    kind: JournalKind
    event: str | None
    from_status: DeliveryStatus | None
    to_status: DeliveryStatus | None
    reason: str | None
    detail: Mapping[str, Any]


@attrs.frozen(kw_only=True)
class DeliveryHistory:
    """A delivery with every attempt and every journal entry, oldest first."""

    delivery: Delivery
    attempts: tuple[Attempt, ...]
    journal: tuple[JournalEntry, ...]


@attrs.frozen(kw_only=True)
class NewDelivery:
    """What ``notify()`` asks the store to create. Validated by the store.

    ``idempotency_key=None`` means "derive one from the new delivery's id".
    ``scheduled_at=None`` means "due now".
    """

    channel: str
    recipient: str
    payload: Any = None
    notification_key: str | None = None
    idempotency_key: str | None = None
    max_attempts: int = 5
    scheduled_at: datetime | None = None
    expires_at: datetime | None = None
    metadata: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class Claim:
    """A lease on a delivery plus the write-ahead attempt taken with it.

    ``delivery`` is the snapshot *after* the claim (its ``version`` is the
    fencing token every later write of this worker must match).
    """

    delivery: Delivery
    attempt: Attempt

    @property
    def owner(self) -> str:
        """The worker identity holding the lease."""
        assert self.delivery.lease_owner is not None
        return self.delivery.lease_owner


@attrs.frozen(kw_only=True)
class Resent:
    """What a resend did: the ``original`` as read, its ``copy``, and whether it made it.

    ``created`` is ``False`` when the original had already been resent:
    ``copy`` is that earlier copy, and nothing was written.
    """

    original: Delivery
    copy: Delivery
    created: bool


@attrs.frozen(kw_only=True)
class LedgerGauges:
    """The ledger's health at one moment, for monitoring (:meth:`SQLStore.gauges`).

    Read in one transaction. ``due`` counts the live deliveries due at ``at``
    that no worker holds: the queue's backlog, however the queue itself
    counts. ``oldest_due_at`` is the earliest ``scheduled_at`` among them
    (``None`` when there are none): ``at`` minus it is how far delivery lags.
    ``stuck`` counts leases that expired with an attempt in flight (a worker
    died mid-call and no rescuer has resolved it yet).
    """

    at: datetime
    counts: Mapping[tuple[DeliveryStatus, str | None], int]
    """Every delivery, per ``(status, reason)``."""
    live_by_channel: Mapping[tuple[str, DeliveryStatus], int]
    """Live deliveries (``ready``, ``failed``) per ``(channel, status)``."""
    due: int
    oldest_due_at: datetime | None
    stuck: int
    outbox: int
    """Outbox rows of deliveries due at ``at``: what a relay would send once old enough.

    The row of a delivery scheduled for later is not counted: it waits for
    its time, not for the relay.
    """
    oldest_outbox_at: datetime | None
    """Since when the longest-waiting of them has waited: the later of its writing and
    its run time (``None``: no such row)."""

    @property
    def due_lag_seconds(self) -> float:
        """How long the oldest due delivery has waited past its time; 0 when none is due."""
        return self._waited_since(self.oldest_due_at)

    @property
    def outbox_age_seconds(self) -> float:
        """How long the longest-waiting outbox row has waited; 0 when none is due."""
        return self._waited_since(self.oldest_outbox_at)

    def _waited_since(self, since: datetime | None) -> float:
        # A clock behind the rows' own is no negative wait.
        return 0.0 if since is None else max(0.0, (self.at - since).total_seconds())


def resend_key(delivery_id: UUID) -> str:
    """The idempotency key of the copy a resend makes of ``delivery_id``: one copy per delivery."""
    return f"{RESEND_KEY_PREFIX}{delivery_id}"


def resent_from(delivery: Delivery) -> UUID | None:
    """The id of the delivery ``delivery`` is a resend of, or ``None`` if it is no resend."""
    key = delivery.idempotency_key
    if not key.startswith(RESEND_KEY_PREFIX):
        return None
    try:
        return UUID(key.removeprefix(RESEND_KEY_PREFIX))
    except ValueError:
        return None  # an application's own key that happens to share the prefix
