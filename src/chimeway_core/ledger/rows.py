"""Rows to records and back: the one place that knows both shapes.

Theory of operation
-------------------
The ledger hands out frozen records (:mod:`chimeway_core.records`) and writes
plain rows. Every conversion between the two is here, and reads a row by
column name (a row of ``select(DELIVERIES)``, or of a join starting with it,
is read through its mapping), so adding a column touches the schema, the
record and this module. Enum-valued columns hold the enum's value and come
back as the enum.

:func:`new_row` turns a :class:`~chimeway_core.records.NewDelivery` into the
row that a create writes, validating every field first (a bad one raises and
writes nothing) and filling in the id and the defaults.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Row

from chimeway_core.errors import (
    InvalidDeliveryError,
    PayloadNotSerializableError,
    PayloadTooLargeError,
)
from chimeway_core.ledger.schema import CHANNEL_LENGTH, KEY_LENGTH, MAX_ATTEMPTS, RECIPIENT_LENGTH
from chimeway_core.ledger.statements import A, J
from chimeway_core.ledger.validation import aware, check_text, plain_json
from chimeway_core.outcomes import Outcome
from chimeway_core.records import (
    RESEND_KEY_PREFIX,
    Attempt,
    Delivery,
    JournalEntry,
    JournalKind,
    NewDelivery,
)
from chimeway_core.states import DeliveryStatus, Event

__all__ = [
    "attempt_from_row",
    "delivery_from_row",
    "delivery_from_values",
    "in_flight_attempt",
    "journal_entry_from_row",
    "journal_values",
    "new_row",
]


def delivery_from_row(row: Row[Any]) -> Delivery:
    """The delivery a row holding the deliveries table's columns holds, read by name.

    A row of ``select(DELIVERIES)``, of a join starting with it (no other
    table of the ledger repeats one of its column names) or of a statement
    returning its columns.
    """
    return delivery_from_values(row._mapping)


def delivery_from_values(values: Mapping[Any, Any]) -> Delivery:
    """The delivery a mapping of the deliveries table's column names to values holds."""
    return Delivery(
        id=values["id"],
        channel=values["channel"],
        recipient=values["recipient"],
        payload=values["payload"],
        notification_key=values["notification_key"],
        idempotency_key=values["idempotency_key"],
        status=DeliveryStatus(values["status"]),
        reason=values["reason"],
        attempt_count=values["attempt_count"],
        max_attempts=values["max_attempts"],
        scheduled_at=values["scheduled_at"],
        expires_at=values["expires_at"],
        lease_owner=values["lease_owner"],
        lease_expires_at=values["lease_expires_at"],
        version=values["version"],
        deferral_count=values["deferral_count"],
        metadata=values["metadata"],
        created_at=values["created_at"],
        updated_at=values["updated_at"],
        trace_context=values.get("trace_context"),
    )


def attempt_from_row(row: Row[Any]) -> Attempt:
    """The attempt a row of the attempts table (or a join with it) holds."""
    m = row._mapping
    outcome = m[A.outcome]
    return Attempt(
        delivery_id=m[A.delivery_id],
        number=m[A.number],
        started_at=m[A.started_at],
        finished_at=m[A.finished_at],
        outcome=Outcome(outcome) if outcome is not None else None,
        error_class=m[A.error_class],
        provider_response=m[A.provider_response],
        error=m[A.error],
        worker=m[A.worker],
    )


def journal_entry_from_row(row: Row[Any]) -> JournalEntry:
    """The journal entry a row of the journal table holds."""
    m = row._mapping
    from_status, to_status = m[J.from_status], m[J.to_status]
    return JournalEntry(
        delivery_id=m[J.delivery_id],
        at=m[J.at],
        kind=JournalKind(m[J.kind]),
        event=m[J.event],
        from_status=DeliveryStatus(from_status) if from_status is not None else None,
        to_status=DeliveryStatus(to_status) if to_status is not None else None,
        reason=m[J.reason],
        detail=m[J.detail],
    )


def suppressed_detail(at: str, policy: str | None) -> dict[str, str]:
    """A suppression's journal detail: when it happened (``notify``, ``perform``), and by whom."""
    return {"at": at} if policy is None else {"at": at, "policy": policy}


def journal_values(
    delivery_id: UUID,
    at: datetime,
    kind: JournalKind,
    *,
    event: Event | None = None,
    from_status: DeliveryStatus | None = None,
    to_status: DeliveryStatus | None = None,
    reason: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The row of a journal entry, as the journal insert takes it."""
    return {
        "delivery_id": delivery_id,
        "at": at,
        "kind": kind.value,
        "event": event.value if event is not None else None,
        "from_status": from_status.value if from_status is not None else None,
        "to_status": to_status.value if to_status is not None else None,
        "reason": reason,
        "detail": dict(detail or {}),
    }


def in_flight_attempt(claimed: Delivery, started_at: datetime, owner: str) -> Attempt:
    """The write-ahead attempt a claim of ``claimed`` (its snapshot after the claim) writes."""
    return Attempt(
        delivery_id=claimed.id,
        number=claimed.attempt_count,
        started_at=started_at,
        finished_at=None,
        outcome=None,
        error_class=None,
        provider_response=None,
        error=None,
        worker=owner,
    )


def new_row(
    spec: NewDelivery, now: datetime, index: int, max_payload_bytes: int, *, resend: bool = False
) -> dict[str, Any]:
    """The row a create writes for ``spec`` at ``now``: validated, id and defaults filled in.

    ``index`` names the spec in errors (``specs[3].channel``); -1 for a lone spec.
    An idempotency key in the resend namespace
    (:data:`~chimeway_core.records.RESEND_KEY_PREFIX`) is refused unless
    ``resend``: only a resend writes a copy's key.
    """
    where = f"specs[{index}]." if index >= 0 else ""
    if not isinstance(spec, NewDelivery):
        raise InvalidDeliveryError(
            where.rstrip(".") or "spec", f"must be a NewDelivery, not {type(spec).__name__}"
        )
    check_text(spec.channel, f"{where}channel", max_length=CHANNEL_LENGTH)
    check_text(spec.recipient, f"{where}recipient", max_length=RECIPIENT_LENGTH)
    check_text(
        spec.notification_key, f"{where}notification_key", max_length=KEY_LENGTH, optional=True
    )
    check_text(
        spec.idempotency_key, f"{where}idempotency_key", max_length=KEY_LENGTH, optional=True
    )
    if not resend and spec.idempotency_key and spec.idempotency_key.startswith(RESEND_KEY_PREFIX):
        # Such a key would be taken for the copy of a delivery (by resend(),
        # resent_from(), the resendable listing): another caller's.
        raise InvalidDeliveryError(
            f"{where}idempotency_key",
            f"must not start with {RESEND_KEY_PREFIX!r}, which is reserved for resend copies",
        )
    if not isinstance(spec.max_attempts, int) or isinstance(spec.max_attempts, bool):
        raise InvalidDeliveryError(f"{where}max_attempts", "must be an int")
    if not 1 <= spec.max_attempts <= MAX_ATTEMPTS:
        # A number is named only where it is short: a huge one is no use in a
        # message, and past 4,300 digits Python refuses to format it at all.
        shown = f", got {spec.max_attempts}" if abs(spec.max_attempts) < 10**12 else ""
        raise InvalidDeliveryError(
            f"{where}max_attempts", f"must be from 1 to {MAX_ATTEMPTS}{shown}"
        )
    scheduled_at = (
        now if spec.scheduled_at is None else aware(spec.scheduled_at, f"{where}scheduled_at")
    )
    expires_at = None if spec.expires_at is None else aware(spec.expires_at, f"{where}expires_at")
    payload, size = plain_json(spec.payload, f"{where}payload")
    if size > max_payload_bytes:
        raise PayloadTooLargeError(f"{where}payload", size, max_payload_bytes)
    meta, size = plain_json(spec.metadata, f"{where}metadata")
    if not isinstance(meta, dict):
        raise PayloadNotSerializableError(f"{where}metadata", "must be a mapping")
    if size > max_payload_bytes:
        raise PayloadTooLargeError(f"{where}metadata", size, max_payload_bytes)
    delivery_id = uuid.uuid4()
    return {
        "id": delivery_id,
        "channel": spec.channel,
        "recipient": spec.recipient,
        "payload": payload,
        "notification_key": spec.notification_key,
        "idempotency_key": spec.idempotency_key or str(delivery_id),
        "status": DeliveryStatus.READY.value,
        "reason": None,
        "attempt_count": 0,
        "max_attempts": spec.max_attempts,
        "scheduled_at": scheduled_at,
        "expires_at": expires_at,
        "lease_owner": None,
        "lease_expires_at": None,
        "version": 1,
        "deferral_count": 0,
        "metadata": meta,
        "created_at": now,
        "updated_at": now,
        "trace_context": None,
    }
