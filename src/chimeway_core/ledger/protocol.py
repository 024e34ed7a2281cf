"""What the engine asks of a ledger: :class:`Ledger` and :class:`LockedRow`.

Theory of operation
-------------------
The engine (``Chimeway``) and the command line depend on these protocols,
not on :class:`~chimeway_core.ledger.store.SQLStore`: they are exactly the
calls they make (drafting, creating and resending; the lock ``perform()``
decides under; the quick claim and the record; transitions by id; the
rescuer's and the relay's reads and writes; the operators' reads). Calls go
one way: the ledger executes what its caller decided and never calls back
into it. :class:`SQLStore` satisfies both (mypy checks it where ``SQLStore``
is defined).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Protocol
from uuid import UUID

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from chimeway_core.ledger.create import Created, Draft
from chimeway_core.ledger.outbox import OutboxItem
from chimeway_core.outcomes import Classification
from chimeway_core.records import (
    Claim,
    Delivery,
    DeliveryHistory,
    LedgerGauges,
    NewDelivery,
    Resent,
)
from chimeway_core.states import DeliveryStatus, Event, Transition

__all__ = ["Ledger", "LockedRow"]


class LockedRow(Protocol):
    """A delivery read for update; at most one write joins its transaction.

    Its counts are serialized with every other locked transaction's counts
    for the same recipient, until the transaction ends: a count sees the
    attempts claimed by each transaction that counted before it.
    """

    delivery_id: UUID
    delivery: Delivery | None

    def recent_attempts(self, channel: str, recipient: str, since: datetime) -> int:
        """Attempts started since ``since`` to this channel and recipient, in this transaction."""
        ...

    def recipient_attempts(
        self, recipient: str, channels: frozenset[str] | None, since: datetime
    ) -> int:
        """Attempts started since ``since`` to ``recipient`` on ``channels`` (``None``: any)."""
        ...

    def claim(self, *, owner: str, lease_seconds: float, now: datetime) -> Claim | None:
        """Take the lease and write the in-flight attempt; ``None`` if not claimable."""
        ...

    def suppress(self, reason: str, *, now: datetime, policy: str | None = None) -> Delivery:
        """Move the delivery to ``suppressed`` with ``reason`` (``policy``: whose it is)."""
        ...

    def defer(
        self, until: datetime, reason: str, *, now: datetime, policy: str | None = None
    ) -> Delivery:
        """Push the delivery to ``until`` for ``reason`` (``policy``: whose it is)."""
        ...

    def exhaust(self, *, now: datetime) -> Delivery:
        """Move a ``failed`` delivery with no attempt left to ``cancelled``."""
        ...


class Ledger(Protocol):
    """The store as the engine, its workers and the command line use it."""

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (a worker disposes its pool after fork)."""
        ...

    # notify and resend: the ledger drafts, the engine decides, the ledger writes.

    def draft_many(self, specs: Sequence[NewDelivery], *, now: datetime) -> list[Draft]:
        """Validate ``specs`` and fill in what their rows will hold; writes nothing."""
        ...

    def create_many(
        self,
        specs: Sequence[NewDelivery | Draft],
        *,
        now: datetime,
        session: Session | None = None,
        suppress_reasons: Sequence[str | None] | None = None,
        suppressed_by: Sequence[str | None] | None = None,
    ) -> list[Created]:
        """Write the deliveries (born suppressed where a reason is given)."""
        ...

    def draft_resend(
        self, delivery_id: UUID, *, now: datetime, session: Session | None = None
    ) -> Draft:
        """The copy a resend of ``delivery_id`` would write; writes nothing."""
        ...

    def resend(
        self,
        delivery_id: UUID | Draft,
        *,
        now: datetime,
        session: Session | None = None,
        suppress_reason: str | None = None,
        suppressed_by: str | None = None,
        by: str | None = None,
    ) -> Resent:
        """Write the copy of a delivery that ended unsent (``by``: who resent it)."""
        ...

    def delete_outbox(self, delivery_ids: Sequence[UUID]) -> None:
        """Remove the outbox rows of deliveries the caller enqueued itself."""
        ...

    # perform

    @property
    def claims_in_one_statement(self) -> bool:
        """Whether :meth:`quick_claim` can claim here."""
        ...

    def quick_claim(
        self,
        delivery_id: UUID,
        *,
        owner: str,
        lease_seconds: Mapping[str, float],
        now: datetime,
    ) -> Claim | None:
        """Claim in one statement a delivery nothing stands in the way of, else ``None``."""
        ...

    def lock(self, delivery_id: UUID) -> AbstractContextManager[LockedRow]:
        """Read a delivery for update; its transaction lasts the block."""
        ...

    def record_attempt(
        self,
        claim: Claim,
        classification: Classification,
        *,
        event: Event | None = None,
        transition: Transition | None = None,
        now: datetime,
        reason: str | None = None,
        next_run_at: datetime | None = None,
    ) -> Delivery:
        """Complete the claim's attempt and apply ``event`` (or ``transition``), fenced."""
        ...

    def exhaust(self, delivery_id: UUID, *, expected_version: int, now: datetime) -> Delivery:
        """Move a ``failed`` delivery to ``cancelled`` / ``retries_exhausted``."""
        ...

    def cancel(self, delivery_id: UUID, *, now: datetime, by: str | None = None) -> Delivery:
        """Cancel a live delivery, even while it is leased (``by``: who cancelled it)."""
        ...

    def count_recent_attempts(self, *, channel: str, recipient: str, since: datetime) -> int:
        """Attempts started since ``since`` to this channel and recipient."""
        ...

    def count_recipient_attempts(
        self, *, recipient: str, since: datetime, channels: Iterable[str] | None = None
    ) -> int:
        """Attempts started since ``since`` to ``recipient`` on ``channels`` (``None``: any)."""
        ...

    # upkeep: relay, rescue, retention

    def relay_outbox(
        self,
        send: Callable[[Sequence[OutboxItem]], None],
        *,
        batch_size: int = 500,
        created_before: datetime | None = None,
        due_before: datetime | None = None,
    ) -> int:
        """Hand committed outbox rows to ``send``, then delete them."""
        ...

    def expired_claims(self, *, now: datetime, limit: int = 100) -> list[Claim]:
        """Live deliveries whose lease expired with an attempt in flight."""
        ...

    def due(
        self, *, now: datetime, limit: int = 500, not_touched_since: datetime | None = None
    ) -> list[Delivery]:
        """Live deliveries due at ``now`` that nobody holds."""
        ...

    def prune(self, *, before: datetime, batch_size: int = 1000, limit: int | None = None) -> int:
        """Delete terminal deliveries older than ``before``."""
        ...

    def count_prunable(self, *, before: datetime) -> int:
        """How many deliveries :meth:`prune` would delete now."""
        ...

    # reads: the engine's and the operators' (command line)

    def get(self, delivery_id: UUID) -> Delivery | None:
        """The delivery with this id, or ``None``."""
        ...

    def history(self, delivery_id: UUID) -> DeliveryHistory | None:
        """The delivery with its attempts and journal, or ``None``."""
        ...

    def find(
        self,
        *,
        status: DeliveryStatus | None = None,
        reason: str | None = None,
        channel: str | None = None,
        recipient: str | None = None,
        idempotency_key: str | None = None,
        created_since: datetime | None = None,
        limit: int = 100,
    ) -> list[Delivery]:
        """The deliveries matching every filter given, newest first."""
        ...

    def resendable(
        self,
        *,
        since: datetime,
        channel: str | None = None,
        reason: str | None = None,
        limit: int | None = None,
    ) -> list[UUID]:
        """Ids of the deliveries that ended unsent since ``since``."""
        ...

    def counts(self) -> dict[tuple[DeliveryStatus, str | None], int]:
        """How many deliveries there are per ``(status, reason)``."""
        ...

    def gauges(self, *, now: datetime, timeout: float | None = None) -> LedgerGauges:
        """The ledger's health at ``now``, as one snapshot."""
        ...

    def oldest_non_terminal(self) -> Delivery | None:
        """The live delivery created first, or ``None``."""
        ...

    def outbox_size(self) -> int:
        """How many committed deliveries wait for the relay."""
        ...
