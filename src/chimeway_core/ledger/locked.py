"""Writes on one delivery read for update: claim, record, transition, defer.

Theory of operation
-------------------
Every write here is checked first and fenced second:

- **State machine first.** A status change is computed with
  :func:`chimeway_core.states.apply_event` from the status the row holds; an
  illegal event raises :class:`~chimeway_core.errors.IllegalTransitionError`
  before anything is written.
- **Compare-and-set second.** A write is ``UPDATE ... WHERE id = :id AND
  version = :expected`` (plus ``lease_owner = :owner`` for a worker's record)
  and bumps ``version`` and ``updated_at``. One that matches nothing raises
  :class:`~chimeway_core.errors.LeaseLostError` (or its subclass
  :class:`~chimeway_core.errors.StaleDeliveryError`) inside the transaction,
  which rolls back everything: two workers racing on one delivery can never
  produce an illegal transition or a lost update.

A claim is one conditional UPDATE (:data:`~chimeway_core.ledger.statements.CLAIM`,
built from :mod:`chimeway_core.ledger.claimable`) that also writes the
attempt row before the channel is called (write-ahead); the record completes
that attempt and applies the transition, fenced on the claim's version and
owner. :class:`LockedDelivery` holds the row read ``FOR UPDATE`` and the one
transaction every write on it joins, so ``perform()`` reads, asks its
policies and claims (or suppresses, or defers) in one commit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import attrs
from sqlalchemy import Connection, Row, delete, select, update

from chimeway_core.errors import (
    DeliveryNotFoundError,
    DeliveryTerminalError,
    IllegalTransitionError,
    InvalidDeliveryError,
    LockReusedError,
    StaleDeliveryError,
)
from chimeway_core.ledger import statements as sql
from chimeway_core.ledger.dialects import Dialect
from chimeway_core.ledger.queries import count_recent_attempts, count_recipient_attempts
from chimeway_core.ledger.rows import (
    delivery_from_row,
    in_flight_attempt,
    journal_values,
    suppressed_detail,
)
from chimeway_core.ledger.schema import ERROR_CLASS_LENGTH, OWNER_LENGTH, REASON_LENGTH
from chimeway_core.ledger.validation import aware, check_text, json_size, sanitize, truncate
from chimeway_core.outcomes import Classification, Outcome
from chimeway_core.records import Claim, Delivery, JournalKind
from chimeway_core.states import (
    TERMINAL_STATUSES,
    DeliveryStatus,
    Event,
    Transition,
    apply_event,
)

__all__ = [
    "LockedDelivery",
    "claim_on",
    "defer_on",
    "lease_end",
    "read_for_write",
    "record_parameters",
    "transition_on",
]


def read_for_write(conn: Connection, delivery_id: UUID, expected_version: int | None) -> Delivery:
    """The delivery as it is now, checked against ``expected_version`` when given."""
    row = conn.execute(select(sql.DELIVERIES).where(sql.D.id == delivery_id)).first()
    if row is None:
        raise DeliveryNotFoundError(delivery_id)
    current = delivery_from_row(row)
    if expected_version is not None and current.version != expected_version:
        raise StaleDeliveryError(delivery_id, expected_version, current.version)
    return current


def write_fenced(conn: Connection, current: Delivery, values: Mapping[str, Any]) -> Row[Any]:
    """Update ``current`` only if its version and status still hold; return the new row."""
    # The row found by its primary key alone, as in the record: see
    # pg_record_statement for what a status condition in the scan costs.
    row = (
        select(sql.D.id, sql.D.version, sql.D.status)
        .where(sql.D.id == current.id)
        .with_for_update()
        .cte("current_row")
    )
    updated = conn.execute(
        update(sql.DELIVERIES)
        .where(
            sql.D.id == row.c.id,
            row.c.version == current.version,
            row.c.status == current.status.value,
        )
        .values(values)
        .returning(*sql.DELIVERIES.c)
    ).first()
    if updated is None:
        raise StaleDeliveryError(current.id, current.version, None)
    return updated


def lease_end(now: datetime, lease_seconds: float) -> datetime:
    """When a lease of ``lease_seconds`` taken at ``now`` ends; refuses a bad length."""
    if not (math.isfinite(lease_seconds) and lease_seconds > 0):
        raise InvalidDeliveryError("lease_seconds", f"must be > 0, got {lease_seconds!r}")
    return now + timedelta(seconds=lease_seconds)


def claim_on(
    dialect: Dialect,
    conn: Connection,
    current: Delivery,
    *,
    owner: str,
    lease_seconds: float,
    now: datetime,
) -> Claim | None:
    """Claim ``current`` (as read in this transaction) and write its attempt, or ``None``."""
    now = aware(now, "now")
    check_text(owner, "owner", max_length=OWNER_LENGTH)
    lease_expires_at = lease_end(now, lease_seconds)
    parameters = {
        "b_id": current.id,
        "b_version": current.version,
        "b_now": now,
        "b_owner": owner,
        "b_lease_expires_at": lease_expires_at,
        "b_updated_at": now,
    }
    if not dialect.claim(conn, parameters, number=current.attempt_count + 1):
        return None
    at = now.astimezone(UTC)
    delivery = attrs.evolve(
        current,
        lease_owner=owner,
        lease_expires_at=lease_expires_at.astimezone(UTC),
        attempt_count=current.attempt_count + 1,
        version=current.version + 1,
        updated_at=at,
    )
    return Claim(delivery=delivery, attempt=in_flight_attempt(delivery, at, owner))


def transition_on(
    conn: Connection,
    current: Delivery,
    event: Event,
    *,
    reason: str | None,
    now: datetime,
    detail: Mapping[str, Any] | None = None,
) -> Delivery:
    """Apply ``event`` to ``current`` (as read in this transaction), fenced; journal it."""
    transition = apply_event(current.status, event)
    new_reason = transition.reason.value if transition.reason is not None else reason
    values: dict[str, Any] = {
        "status": transition.dest.value,
        "reason": new_reason,
        "version": sql.D.version + 1,
        "updated_at": now,
    }
    if transition.dest in TERMINAL_STATUSES:
        values.update(lease_owner=None, lease_expires_at=None)
    updated = write_fenced(conn, current, values)
    conn.execute(
        sql.INSERT_JOURNAL,
        journal_values(
            current.id,
            now,
            JournalKind.TRANSITION,
            event=event,
            from_status=current.status,
            to_status=transition.dest,
            reason=new_reason,
            detail=detail,
        ),
    )
    if transition.dest in TERMINAL_STATUSES:
        conn.execute(delete(sql.OUTBOX).where(sql.OUT.delivery_id == current.id))
        if current.lease_owner is not None:
            # Cancelled (or suppressed) mid-call: the leased worker's late
            # record is fenced off, so close its attempt here as unknown
            # rather than leave it in flight forever.
            conn.execute(
                update(sql.ATTEMPTS)
                .where(sql.A.delivery_id == current.id, sql.A.outcome.is_(None))
                .values(
                    finished_at=now,
                    outcome=Outcome.UNKNOWN.value,
                    error=f"{event.value} while the call was in flight",
                )
            )
    return delivery_from_row(updated)


def defer_on(
    conn: Connection,
    current: Delivery,
    until: datetime,
    reason: str,
    *,
    now: datetime,
    policy: str | None = None,
) -> Delivery:
    """Push ``current`` (as read in this transaction) to ``until``, fenced; journal it.

    The journal entry names ``policy`` (the deferring policy's name), when given.
    """
    if current.is_terminal:
        raise DeliveryTerminalError(current.id, current.status, "defer")
    updated = write_fenced(
        conn,
        current,
        {
            "scheduled_at": until,
            "reason": reason,
            "deferral_count": sql.D.deferral_count + 1,
            "version": sql.D.version + 1,
            "updated_at": now,
        },
    )
    conn.execute(
        sql.INSERT_JOURNAL,
        journal_values(
            current.id,
            now,
            JournalKind.DEFERRED,
            from_status=current.status,
            to_status=current.status,
            reason=reason,
            detail={
                "until": until.isoformat(),
                "deferral_count": current.deferral_count + 1,
                **({} if policy is None else {"policy": policy}),
            },
        ),
    )
    return delivery_from_row(updated)


class LockedDelivery:
    """A delivery read for update, and the one transaction every write on it joins.

    Yielded by :meth:`SQLStore.lock`. ``delivery`` is ``None`` for an unknown
    id. While the block runs nobody else can write the row (PostgreSQL ``SELECT
    ... FOR UPDATE``; SQLite's ``BEGIN IMMEDIATE`` write lock), so what the
    caller decides from ``delivery`` still holds when it writes. The first
    rate count (:meth:`recent_attempts`, :meth:`recipient_attempts`) also
    takes the count lock of the delivery's recipient, held to the end of the
    transaction (:meth:`~chimeway_core.ledger.dialects.Dialect.lock_rate_counts`):
    the transactions that count for one recipient take turns, each seeing
    the attempts the others claimed, so a rate limit holds exactly however
    many workers perform at once. At most one of
    :meth:`claim`, :meth:`suppress`, :meth:`defer` and :meth:`exhaust` may be
    called (a second raises :class:`~chimeway_core.errors.LockReusedError`);
    the transaction commits when the block ends and rolls everything back if
    it raises.
    """

    def __init__(
        self, conn: Connection, delivery_id: UUID, delivery: Delivery | None, dialect: Dialect
    ) -> None:
        self._conn = conn
        self._dialect = dialect
        self.delivery_id = delivery_id
        self.delivery = delivery
        self._written = False
        self._counting = False

    def __repr__(self) -> str:
        found = "found" if self.delivery is not None else "missing"
        return f"<LockedDelivery {self.delivery_id} {found} written={self._written}>"

    def _current(self, operation: str) -> Delivery:
        if self.delivery is None:
            raise DeliveryNotFoundError(self.delivery_id)
        if self._written:
            raise LockReusedError(self.delivery_id, operation)
        self._written = True
        return self.delivery

    def _count_under_lock(self, recipient: str) -> None:
        if self._counting:
            return
        # One count lock per transaction, taken after the row lock: the
        # delivery's recipient's, whichever recipient a policy counts for, so
        # no transaction waits for a count lock while it holds another.
        whose = self.delivery.recipient if self.delivery is not None else recipient
        self._dialect.lock_rate_counts(self._conn, whose)
        self._counting = True

    def recent_attempts(self, channel: str, recipient: str, since: datetime) -> int:
        """:meth:`SQLStore.count_recent_attempts`, inside this transaction, under the count lock."""
        self._count_under_lock(recipient)
        return count_recent_attempts(self._conn, channel, recipient, since)

    def recipient_attempts(
        self, recipient: str, channels: frozenset[str] | None, since: datetime
    ) -> int:
        """:meth:`SQLStore.count_recipient_attempts`, in this transaction, under the count lock."""
        self._count_under_lock(recipient)
        return count_recipient_attempts(self._conn, recipient, channels, since)

    def claim(self, *, owner: str, lease_seconds: float, now: datetime) -> Claim | None:
        """Take the lease and write the in-flight attempt; ``None`` if not claimable.

        The same conditions as :meth:`SQLStore.claim`, checked by the database,
        plus the version read: :func:`~chimeway_core.ledger.claimable.claimable`
        (live, due, no live lease, below ``max_attempts``) and no attempt in flight.
        """
        return claim_on(
            self._dialect,
            self._conn,
            self._current("claim"),
            owner=owner,
            lease_seconds=lease_seconds,
            now=now,
        )

    def suppress(self, reason: str, *, now: datetime, policy: str | None = None) -> Delivery:
        """Move the delivery to ``suppressed`` with a policy's ``reason``.

        The journal entry says it happened at perform time, and ``policy``
        (the policy's name), when given.
        """
        check_text(reason, "reason", max_length=REASON_LENGTH)
        now = aware(now, "now")
        return transition_on(
            self._conn,
            self._current("suppress"),
            Event.SUPPRESS,
            reason=reason,
            now=now,
            detail=suppressed_detail("perform", policy),
        )

    def defer(
        self, until: datetime, reason: str, *, now: datetime, policy: str | None = None
    ) -> Delivery:
        """Push the delivery to ``until`` for a policy's ``reason`` (no attempt used).

        The journal entry names ``policy`` (the policy's name), when given.
        """
        now = aware(now, "now")
        until = aware(until, "until")
        check_text(reason, "reason", max_length=REASON_LENGTH)
        return defer_on(self._conn, self._current("defer"), until, reason, now=now, policy=policy)

    def exhaust(self, *, now: datetime) -> Delivery:
        """Move a ``failed`` delivery with no attempt left to ``cancelled``."""
        now = aware(now, "now")
        return transition_on(
            self._conn, self._current("exhaust"), Event.EXHAUST, reason=None, now=now
        )


def resolve_transition(
    status: DeliveryStatus, event: Event | None, transition: Transition | None
) -> Transition:
    """The move a record makes from ``status``: ``event`` applied, or ``transition`` checked.

    The engine, which decides the transition before it records, passes it
    (so the table is not consulted twice); a direct caller passes the event.
    Exactly one is given (else :class:`TypeError`), and a transition must
    start at ``status`` (else :class:`IllegalTransitionError`, as an event
    that is not allowed from it): nothing is written before.
    """
    if (event is None) == (transition is None):
        raise TypeError("record_attempt takes event or transition, exactly one")
    if transition is None:
        assert event is not None  # for mypy: exactly one was given
        return apply_event(status, event)
    if transition.source is not status:
        raise IllegalTransitionError(status, transition.event)
    return transition


def record_parameters(
    claim: Claim,
    classification: Classification,
    *,
    transition: Transition,
    now: datetime,
    reason: str | None,
    next_run_at: datetime | None,
    max_response_bytes: int,
    max_error_chars: int,
) -> tuple[dict[str, Any], Delivery]:
    """The parameters of the record of ``claim``, and the delivery as it leaves it.

    ``transition`` is the move the attempt makes from the claimed status
    (:func:`resolve_transition` checked it). Checks everything first: a naive
    time or a bad ``reason`` raises before anything is written. The provider response is
    replaced by ``{"truncated": True, "original_bytes": n}`` over
    ``max_response_bytes``; the error is truncated to ``max_error_chars``.
    """
    now = aware(now, "now")
    if next_run_at is not None:
        aware(next_run_at, "next_run_at")
    check_text(reason, "reason", max_length=REASON_LENGTH, optional=True)
    before = claim.delivery
    new_reason = transition.reason.value if transition.reason is not None else reason
    response = sanitize(classification.provider_response)
    size = json_size(response)
    if size > max_response_bytes:
        response = {"truncated": True, "original_bytes": size}
    error_class = classification.error_class
    outcome = Outcome(classification.outcome).value
    stored_class = (
        truncate(str(error_class), ERROR_CLASS_LENGTH) if error_class is not None else None
    )
    parameters: dict[str, Any] = {
        # The delivery's fence and transition.
        "b_id": before.id,
        "b_version": before.version,
        "b_from_status": before.status.value,
        "b_owner": claim.owner,
        "b_status": transition.dest.value,
        "b_reason": new_reason,
        "b_updated_at": now,
        # The attempt.
        "b_number": claim.attempt.number,
        "b_finished_at": now,
        "b_outcome": outcome,
        "b_error_class": stored_class,
        "b_provider_response": response,
        "b_error": truncate(classification.error, max_error_chars),
    }
    if next_run_at is not None:
        parameters["b_scheduled_at"] = next_run_at
    journal = journal_values(
        before.id,
        now,
        JournalKind.TRANSITION,
        event=transition.event,
        from_status=before.status,
        to_status=transition.dest,
        reason=new_reason,
        detail={"attempt": claim.attempt.number, "outcome": outcome, "error_class": stored_class},
    )
    parameters.update({f"j_{name}": value for name, value in journal.items()})
    # The row as the fenced write leaves it: every changed column is known here.
    after = attrs.evolve(
        before,
        status=transition.dest,
        reason=new_reason,
        lease_owner=None,
        lease_expires_at=None,
        version=before.version + 1,
        updated_at=now.astimezone(UTC),
        scheduled_at=before.scheduled_at if next_run_at is None else next_run_at.astimezone(UTC),
    )
    return parameters, after
