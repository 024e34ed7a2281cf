"""Creating deliveries and resending them: drafts first, then one batch of writes.

Theory of operation
-------------------
A create happens in two steps, so that whoever decides about a delivery
(the engine's notify-time policies) sees it exactly as it will be written,
and the ledger never calls back into its caller:

1. **Draft.** :func:`draft_many` validates every spec (one invalid spec raises
   :class:`~chimeway_core.errors.InvalidDeliveryError` and nothing is
   drafted) and fills in what the row will hold: its id, ``idempotency_key``
   (``str(id)`` unless given), ``scheduled_at`` (``now`` unless given), status
   ``ready``, version 1. Nothing is read or written.
2. **Write.** :func:`insert_deliveries` writes the rows, each with its
   ``created`` journal entry and, unless a suppression reason was given for
   it (then it is born ``suppressed`` and the journal records the
   ``suppress`` transition), its outbox row. Rows go in key order, so
   concurrent batches lock keys in one order (no deadlock on PostgreSQL);
   conflicts on ``(channel, idempotency_key)`` are skipped, never a database
   error, so a caller's transaction is never aborted by a duplicate, and the
   rows not written get the delivery that holds their key, once it is checked
   to be the same request (:func:`_request_of`; else
   :class:`~chimeway_core.errors.IdempotencyKeyConflictError`, which the
   conflict's row was not written for, and the rest of a batch is rolled
   back by the store).

A resend is the same write of one draft, the copy of a delivery that ended
unsent, with the key :func:`~chimeway_core.records.resend_key` of the
original, so a delivery has at most one copy. Only a resend writes such a key
(:func:`~chimeway_core.ledger.rows.new_row` refuses it otherwise), and an
existing delivery under it is taken as the copy only if the original's
``resent`` journal entry names it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final
from uuid import UUID

import attrs
from sqlalchemy import Connection, select, tuple_

from chimeway_core.errors import (
    DeliveriesVanishedError,
    DeliveryNotFoundError,
    IdempotencyKeyConflictError,
    InvalidDeliveryError,
    NotResendableError,
)
from chimeway_core.ledger import statements as sql
from chimeway_core.ledger.dialects import Dialect
from chimeway_core.ledger.queries import RESENDABLE
from chimeway_core.ledger.rows import (
    delivery_from_row,
    delivery_from_values,
    journal_values,
    new_row,
    suppressed_detail,
)
from chimeway_core.ledger.schema import REASON_LENGTH, TRACE_CONTEXT_LENGTH
from chimeway_core.ledger.validation import check_text
from chimeway_core.records import Delivery, JournalKind, NewDelivery, Resent, resend_key
from chimeway_core.states import DeliveryStatus, Event, apply_event

__all__ = [
    "Created",
    "Draft",
    "apply_suppressions",
    "copy_spec",
    "draft",
    "draft_many",
    "insert_deliveries",
    "may_conflict",
    "resend_on",
    "resend_original",
    "rows_of",
]

# How often a create writes again the rows whose existing key was pruned as it
# was read back: one retry settles it (a key written since is a live delivery).
_CREATE_TRIES: Final = 3


@attrs.frozen
class Created:
    """What :meth:`SQLStore.create` returns.

    ``created`` is ``False`` when a delivery with the same
    ``(channel, idempotency_key)`` already existed: ``delivery`` is that one.
    """

    delivery: Delivery
    created: bool


@attrs.frozen
class Draft:
    """A delivery as a create will write it: validated, its id and defaults filled in.

    Made by :meth:`SQLStore.draft_many` (or :meth:`SQLStore.draft_resend`, for
    the copy a resend writes) and written by :meth:`SQLStore.create_many` (or
    :meth:`SQLStore.resend`) with the same ``now``; ``delivery`` is what the
    row will hold, born ``ready``. Write a draft once.
    """

    delivery: Delivery
    resend_of: UUID | None = None
    """The original's id, for the copy a resend writes."""
    _row: Mapping[str, Any] = attrs.field(default=attrs.Factory(dict), repr=False, eq=False)

    def traced(self, trace_context: str | None) -> Draft:
        """This draft, written with ``trace_context`` (the trace notify() ran in).

        Raises :class:`~chimeway_core.errors.InvalidDeliveryError` for a
        context that is not a string of at most 512 characters.
        """
        check_text(trace_context, "trace_context", max_length=TRACE_CONTEXT_LENGTH, optional=True)
        return Draft(
            attrs.evolve(self.delivery, trace_context=trace_context),
            self.resend_of,
            {**self._row, "trace_context": trace_context},
        )


def draft(
    spec: NewDelivery, now: datetime, index: int, max_payload_bytes: int, *, resend_of: UUID | None
) -> Draft:
    """The draft of one spec (``index`` names it in errors; -1 for a lone spec)."""
    row = new_row(spec, now, index, max_payload_bytes, resend=resend_of is not None)
    return Draft(delivery_from_values(row), resend_of, row)


def draft_many(specs: Sequence[NewDelivery], now: datetime, max_payload_bytes: int) -> list[Draft]:
    """The drafts of ``specs``, in order; every spec validated before the first is returned."""
    single = len(specs) == 1
    return [
        draft(spec, now, -1 if single else index, max_payload_bytes, resend_of=None)
        for index, spec in enumerate(specs)
    ]


def rows_of(
    items: Sequence[NewDelivery | Draft], now: datetime, max_payload_bytes: int
) -> tuple[list[dict[str, Any]], dict[UUID, Delivery]]:
    """The rows to write for specs and drafts, and the drafts' deliveries by id.

    A spec is validated here; a draft was validated when it was made, and must
    have been made at ``now``.
    """
    single = len(items) == 1
    rows: list[dict[str, Any]] = []
    drafted: dict[UUID, Delivery] = {}
    for index, item in enumerate(items):
        if isinstance(item, Draft):
            if item.delivery.created_at != now:
                raise InvalidDeliveryError("now", "differs from the now its drafts were made at")
            rows.append(dict(item._row))
            drafted[item.delivery.id] = item.delivery
        else:
            rows.append(new_row(item, now, -1 if single else index, max_payload_bytes))
    return rows, drafted


def apply_suppressions(
    rows: Sequence[dict[str, Any]],
    reasons: Sequence[str | None] | None,
    drafted: dict[UUID, Delivery],
) -> None:
    """Make the rows given a reason born suppressed (their drafts no longer say what is written)."""
    if reasons is None:
        return
    for row, reason in zip(rows, reasons, strict=True):
        check_text(reason, "suppress_reason", max_length=REASON_LENGTH, optional=True)
        if reason is not None:
            row["status"] = apply_event(DeliveryStatus.READY, Event.SUPPRESS).dest.value
            row["reason"] = reason
            drafted.pop(row["id"], None)


def _key_of(row: Mapping[str, Any]) -> tuple[str, str]:
    return row["channel"], row["idempotency_key"]


def _canonical(value: Any) -> str:
    # JSON text, not Python equality: True == 1 and 1 == 1.0, but a channel
    # sends true, 1 and 1.0 differently.
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _request_of(values: Mapping[str, Any] | Delivery) -> tuple[str, str | None, str, str]:
    """What makes two creates with one key the same request (see ``Chimeway.notify``).

    What is sent, and to whom: not when (``scheduled_at``, ``expires_at``,
    often computed from the clock at each call) nor how often it is tried
    (``max_attempts``, by default the engine's setting of the day): a repeat
    leaves those as the first request set them.
    """
    if isinstance(values, Delivery):
        values = {
            "recipient": values.recipient,
            "notification_key": values.notification_key,
            "payload": values.payload,
            "metadata": dict(values.metadata or {}),
        }
    return (
        values["recipient"],
        values["notification_key"],
        _canonical(values["payload"]),
        _canonical(dict(values["metadata"] or {})),
    )


def may_conflict(rows: Sequence[Mapping[str, Any]]) -> bool:
    """Whether writing ``rows`` may meet an :class:`IdempotencyKeyConflictError` part way.

    Only a batch that holds a key its caller chose can: a key left to default
    is the row's own fresh id, which no other delivery holds.
    """
    return len(rows) > 1 and any(row["idempotency_key"] != str(row["id"]) for row in rows)


def _check_repeats(
    rows: Sequence[Mapping[str, Any]],
    inserted: set[UUID],
    existing: Mapping[tuple[str, str], Delivery],
) -> None:
    """Raise unless every row not written asks for what the delivery holding its key holds."""
    clashes = {
        _key_of(row)
        for row in rows
        if row["id"] not in inserted and _request_of(row) != _request_of(existing[_key_of(row)])
    }
    if clashes:
        raise IdempotencyKeyConflictError(sorted(clashes))


def _insert_new(
    conn: Connection,
    dialect: Dialect,
    rows: Sequence[dict[str, Any]],
    now: datetime,
    suppressed_by: Mapping[UUID, str],
) -> set[UUID]:
    """Write the rows whose key is free, with their journal and outbox rows; their ids."""
    if all(row["reason"] is None for row in rows):
        # Born ready: where the database can, delivery, journal and outbox
        # rows in one statement per chunk.
        inserted = dialect.create_ready(conn, rows, now)
        if inserted is not None:
            return inserted
    inserted = set()
    for chunk in sql.in_chunks(rows, 1000):
        inserted.update(conn.execute(dialect.insert_ignoring_conflicts, list(chunk)).scalars())
    journal: list[dict[str, Any]] = []
    outbox: list[dict[str, Any]] = []
    for row in rows:
        if row["id"] not in inserted:
            continue
        journal.append(
            journal_values(row["id"], now, JournalKind.CREATED, to_status=DeliveryStatus.READY)
        )
        if row["reason"] is None:
            outbox.append({"delivery_id": row["id"], "run_at": row["scheduled_at"]})
            outbox[-1]["created_at"] = now
        else:
            journal.append(
                journal_values(
                    row["id"],
                    now,
                    JournalKind.TRANSITION,
                    event=Event.SUPPRESS,
                    from_status=DeliveryStatus.READY,
                    to_status=DeliveryStatus.SUPPRESSED,
                    reason=row["reason"],
                    detail=suppressed_detail("notify", suppressed_by.get(row["id"])),
                )
            )
    if journal:
        conn.execute(sql.JOURNAL.insert(), journal)
    if outbox:
        conn.execute(sql.OUTBOX.insert(), outbox)
    return inserted


def _existing(
    conn: Connection, rows: Sequence[Mapping[str, Any]], inserted: set[UUID]
) -> dict[tuple[str, str], Delivery]:
    """The deliveries already holding the keys of the rows not inserted, by key."""
    existing: dict[tuple[str, str], Delivery] = {}
    missing = sorted({_key_of(row) for row in rows if row["id"] not in inserted})
    for chunk in sql.in_chunks(missing):
        query = select(sql.DELIVERIES).where(
            tuple_(sql.D.channel, sql.D.idempotency_key).in_(list(chunk))
        )
        for found in conn.execute(query):
            delivery = delivery_from_row(found)
            existing[delivery.channel, delivery.idempotency_key] = delivery
    return existing


def _results(
    rows: Sequence[Mapping[str, Any]],
    inserted: set[UUID],
    existing: Mapping[tuple[str, str], Delivery],
    drafted: Mapping[UUID, Delivery],
) -> list[Created]:
    """One result per row, in ``rows`` order; a written row's delivery is its draft's if any."""
    results: list[Created] = []
    for row in rows:
        if row["id"] in inserted:
            shown = drafted.get(row["id"])
            delivery = delivery_from_values(row) if shown is None else shown
            results.append(Created(delivery, created=True))
        else:
            results.append(Created(existing[_key_of(row)], created=False))
    return results


def insert_deliveries(
    conn: Connection,
    dialect: Dialect,
    rows: list[dict[str, Any]],
    now: datetime,
    drafted: Mapping[UUID, Delivery],
    suppressed_by: Mapping[UUID, str] | None = None,
) -> list[Created]:
    """Write ``rows`` on ``conn`` (see the module docstring); one result per row, in order.

    ``suppressed_by`` names, by row id, the policy that suppressed a row born
    suppressed; its journal entry records it.

    Raises :class:`~chimeway_core.errors.IdempotencyKeyConflictError`, naming
    every such key, when a row's key is held by a different request (written
    before, or earlier in ``rows``). It is raised after writing the other
    rows: the caller rolls back what ``conn`` wrote (a batch for which
    :func:`may_conflict` is true goes in a transaction or a savepoint; a
    single row in conflict is a row not written, so nothing was). Raises
    :class:`~chimeway_core.errors.DeliveriesVanishedError` when keys
    kept vanishing as they were read back, ``_CREATE_TRIES`` rounds in a row.
    """
    ordered = sorted(rows, key=_key_of)
    inserted: set[UUID] = set()
    pending = ordered
    for _ in range(_CREATE_TRIES):
        inserted |= _insert_new(conn, dialect, pending, now, suppressed_by or {})
        existing = _existing(conn, rows, inserted)
        # A key taken when its row was inserted but gone when read back was
        # pruned in between (PostgreSQL, another transaction): it is free
        # now, so the row is written again.
        pending = [
            row for row in ordered if row["id"] not in inserted and _key_of(row) not in existing
        ]
        if not pending:
            _check_repeats(rows, inserted, existing)
            return _results(rows, inserted, existing, drafted)
    keys = sorted({_key_of(row) for row in pending})
    raise DeliveriesVanishedError(keys, _CREATE_TRIES)


def resend_original(conn: Connection, delivery_id: UUID, *, for_update: bool) -> Delivery:
    """The delivery to resend, read on ``conn``; raises unless it ended unsent."""
    query = sql.SELECT_FOR_UPDATE if for_update else sql.SELECT_BY_ID
    row = conn.execute(query, {"b_id": delivery_id}).first()
    if row is None:
        raise DeliveryNotFoundError(delivery_id)
    original = delivery_from_row(row)
    if original.status not in RESENDABLE:
        raise NotResendableError(delivery_id, original.status, original.reason)
    return original


def copy_spec(original: Delivery) -> NewDelivery:
    """What the copy of ``original`` is made of (it is due when written)."""
    return NewDelivery(
        channel=original.channel,
        recipient=original.recipient,
        payload=original.payload,
        notification_key=original.notification_key,
        idempotency_key=resend_key(original.id),
        max_attempts=original.max_attempts,
        expires_at=original.expires_at,
        metadata=original.metadata,
    )


def resend_on(
    conn: Connection,
    dialect: Dialect,
    delivery_id: UUID,
    now: datetime,
    *,
    copy: Draft | None,
    suppress_reason: str | None,
    max_payload_bytes: int,
    suppressed_by: str | None = None,
    by: str | None = None,
) -> Resent:
    """Write the copy of ``delivery_id`` (``copy``, else drafted here) and journal it.

    ``by`` (who resent it) goes into the original's ``resent`` entry's detail.
    """
    original = resend_original(conn, delivery_id, for_update=True)
    if copy is None:
        copy = draft(copy_spec(original), now, -1, max_payload_bytes, resend_of=original.id)
    rows, drafted = rows_of([copy], now, max_payload_bytes)
    apply_suppressions(rows, None if suppress_reason is None else [suppress_reason], drafted)
    policies = {} if suppressed_by is None else {rows[0]["id"]: suppressed_by}
    [result] = insert_deliveries(conn, dialect, rows, now, drafted, policies)
    if result.created:
        detail = {"as": str(result.delivery.id)} | ({} if by is None else {"by": by})
        conn.execute(
            sql.JOURNAL.insert(),
            journal_values(original.id, now, JournalKind.RESENT, detail=detail),
        )
    elif not _is_copy_of(conn, original.id, result.delivery.id):
        # The copy's key is held by a delivery no resend wrote: one notify()
        # wrote under that key before it refused the resend namespace.
        raise IdempotencyKeyConflictError([_key_of(rows[0])])
    return Resent(original=original, copy=result.delivery, created=result.created)


def _is_copy_of(conn: Connection, original_id: UUID, copy_id: UUID) -> bool:
    """Whether the original's journal says ``copy_id`` is its copy (a ``resent`` entry)."""
    query = select(sql.J.detail).where(
        sql.J.delivery_id == original_id, sql.J.kind == JournalKind.RESENT.value
    )
    return any((detail or {}).get("as") == str(copy_id) for detail in conn.execute(query).scalars())


def shown(rows: Sequence[Mapping[str, Any]], drafted: dict[UUID, Delivery]) -> list[Delivery]:
    """Each row's delivery as drafted (drafted now for the specs): what ``suppress_if`` sees."""
    for row in rows:
        if row["id"] not in drafted:
            drafted[row["id"]] = delivery_from_values(row)
    return [drafted[row["id"]] for row in rows]
