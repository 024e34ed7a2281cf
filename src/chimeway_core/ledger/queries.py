"""What the ledger reads: deliveries by id or by filter, the rescuer's lists, the gauges.

Theory of operation
-------------------
Every function here reads through a connection its caller opened (the
store's read transaction, or the gauges' snapshot), so several reads can see
one consistent state. Functions named ``*_query`` check their arguments and
build the statement before any connection is taken: a bad filter raises
without touching the database. Aggregates run in the database (counts by the
``(status, reason)`` index, the due backlog over live deliveries only), never
over rows fetched into Python.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Final
from uuid import UUID

from sqlalchemy import Connection, Engine, Select, case, func, select

from chimeway_core._checks import seconds, whole
from chimeway_core.ledger import retention
from chimeway_core.ledger import statements as sql
from chimeway_core.ledger.claimable import LIVE
from chimeway_core.ledger.dialects import Dialect
from chimeway_core.ledger.outbox import size as outbox_rows
from chimeway_core.ledger.rows import attempt_from_row, delivery_from_row, journal_entry_from_row
from chimeway_core.ledger.validation import aware, check_id, check_limit
from chimeway_core.records import (
    RESEND_KEY_PREFIX,
    Claim,
    Delivery,
    DeliveryHistory,
    LedgerGauges,
)
from chimeway_core.states import RESENDABLE_STATUSES, DeliveryStatus

__all__ = [
    "RESENDABLE",
    "Reads",
    "count_by_status",
    "count_recent_attempts",
    "count_recipient_attempts",
    "deliveries",
    "due_query",
    "expired_claims",
    "find_query",
    "gauges",
    "get",
    "history",
    "oldest_non_terminal",
    "resendable_query",
]

#: What ended unsent: what a resend may copy (derived from the state machine).
RESENDABLE: Final = RESENDABLE_STATUSES

# No "now" in it: LIVE's SQL binds its statuses, not the time.
_LIVE_ROWS: Final = LIVE.where(None)


def get(conn: Connection, delivery_id: UUID) -> Delivery | None:
    """The delivery with this id, or ``None``."""
    row = conn.execute(select(sql.DELIVERIES).where(sql.D.id == delivery_id)).first()
    return delivery_from_row(row) if row is not None else None


def history(conn: Connection, delivery_id: UUID) -> DeliveryHistory | None:
    """The delivery with its attempts and journal entries, oldest first; or ``None``."""
    row = conn.execute(select(sql.DELIVERIES).where(sql.D.id == delivery_id)).first()
    if row is None:
        return None
    attempts = conn.execute(
        select(sql.ATTEMPTS).where(sql.A.delivery_id == delivery_id).order_by(sql.A.number)
    ).all()
    journal = conn.execute(
        select(sql.JOURNAL).where(sql.J.delivery_id == delivery_id).order_by(sql.J.id)
    ).all()
    return DeliveryHistory(
        delivery=delivery_from_row(row),
        attempts=tuple(attempt_from_row(a) for a in attempts),
        journal=tuple(journal_entry_from_row(j) for j in journal),
    )


def deliveries(conn: Connection, query: Select[Any]) -> list[Delivery]:
    """The deliveries a query of the deliveries table's rows returns, in its order."""
    return [delivery_from_row(row) for row in conn.execute(query)]


def expired_claims(conn: Connection, now: datetime, limit: int) -> list[Claim]:
    """Live deliveries whose lease expired over an attempt in flight, as the claims they held."""
    query = sql.expired_in_flight(now).order_by(sql.D.lease_expires_at).limit(limit)
    rows = conn.execute(query).all()
    return [Claim(delivery=delivery_from_row(row), attempt=attempt_from_row(row)) for row in rows]


def due_query(now: datetime, limit: int, not_touched_since: datetime | None) -> Select[Any]:
    """Live deliveries due at ``now`` that nobody holds, earliest first."""
    query = select(sql.DELIVERIES).where(sql.due_unheld(now))
    if not_touched_since is not None:
        query = query.where(sql.D.updated_at <= aware(not_touched_since, "not_touched_since"))
    return query.order_by(sql.D.scheduled_at).limit(limit)


def find_query(
    *,
    status: DeliveryStatus | None,
    reason: str | None,
    channel: str | None,
    recipient: str | None,
    idempotency_key: str | None,
    created_since: datetime | None,
    limit: int,
) -> Select[Any]:
    """The deliveries matching every filter given, newest first; checks each filter."""
    if status is not None and not isinstance(status, DeliveryStatus):
        raise TypeError(f"status must be a DeliveryStatus, not {type(status).__name__}")
    whole("limit", limit, minimum=1)
    query = select(sql.DELIVERIES).order_by(sql.D.created_at.desc(), sql.D.id.desc()).limit(limit)
    query = sql.matching(
        query,
        (
            ("reason", reason, sql.D.reason),
            ("channel", channel, sql.D.channel),
            ("recipient", recipient, sql.D.recipient),
            ("idempotency_key", idempotency_key, sql.D.idempotency_key),
        ),
    )
    if status is not None:
        query = query.where(sql.D.status == status.value)
    if created_since is not None:
        query = query.where(sql.D.created_at >= aware(created_since, "created_since"))
    return query


def resendable_query(
    since: datetime, channel: str | None, reason: str | None, limit: int | None
) -> Select[tuple[UUID]]:
    """Ids of cancelled and suppressed deliveries last written since ``since``, no copies."""
    since = aware(since, "since")
    if limit is not None:
        whole("limit", limit, minimum=1)
    query = (
        select(sql.D.id)
        .where(
            sql.D.status.in_([status.value for status in sorted(RESENDABLE)]),
            sql.D.updated_at >= since,
            ~sql.D.idempotency_key.startswith(RESEND_KEY_PREFIX, autoescape=True),
        )
        .order_by(sql.D.updated_at, sql.D.id)
        .limit(limit)
    )
    return sql.matching(
        query, (("channel", channel, sql.D.channel), ("reason", reason, sql.D.reason))
    )


def oldest_non_terminal(conn: Connection) -> Delivery | None:
    """The live delivery created first, or ``None``."""
    query = select(sql.DELIVERIES).where(_LIVE_ROWS).order_by(sql.D.created_at).limit(1)
    row = conn.execute(query).first()
    return delivery_from_row(row) if row is not None else None


def count_by_status(conn: Connection) -> dict[tuple[DeliveryStatus, str | None], int]:
    """How many deliveries there are per ``(status, reason)``."""
    query = select(sql.D.status, sql.D.reason, func.count()).group_by(sql.D.status, sql.D.reason)
    rows = conn.execute(query)
    return {(DeliveryStatus(status), reason): count for status, reason, count in rows}


def count_recent_attempts(conn: Connection, channel: str, recipient: str, since: datetime) -> int:
    """Attempts started at or after ``since`` to this channel and recipient."""
    since = aware(since, "since")
    parameters = {"b_channel": channel, "b_recipient": recipient, "b_since": since}
    return int(conn.execute(sql.COUNT_RECENT_ATTEMPTS, parameters).scalar_one())


def count_recipient_attempts(
    conn: Connection, recipient: str, channels: frozenset[str] | None, since: datetime
) -> int:
    """Attempts started at or after ``since`` to this recipient on ``channels`` (``None``: any)."""
    since = aware(since, "since")
    parameters: dict[str, object] = {"b_recipient": recipient, "b_since": since}
    if channels is None:
        return int(conn.execute(sql.COUNT_RECIPIENT_ATTEMPTS, parameters).scalar_one())
    if not channels:
        return 0
    parameters["b_channels"] = sorted(channels)
    return int(conn.execute(sql.COUNT_RECIPIENT_ATTEMPTS_ON, parameters).scalar_one())


def gauges(conn: Connection, now: datetime) -> LedgerGauges:
    """The ledger's health at ``now``: five aggregate queries, read on ``conn``."""
    live = (
        select(sql.D.channel, sql.D.status, func.count())
        .where(_LIVE_ROWS)
        .group_by(sql.D.channel, sql.D.status)
    )
    due = select(func.count(), func.min(sql.D.scheduled_at)).where(sql.due_unheld(now))
    stuck = select(func.count()).select_from(sql.expired_in_flight(now).subquery())
    # A row waits for the relay from the later of its writing and its run time.
    waiting_since = case(
        (sql.OUT.run_at > sql.OUT.created_at, sql.OUT.run_at), else_=sql.OUT.created_at
    )
    outbox = select(func.count(), func.min(waiting_since)).where(sql.OUT.run_at <= now)
    counts = count_by_status(conn)
    by_channel = {
        (channel, DeliveryStatus(status)): count for channel, status, count in conn.execute(live)
    }
    due_count, oldest_due = conn.execute(due).one()
    stuck_count = conn.execute(stuck).scalar_one()
    outbox_count, oldest_outbox = conn.execute(outbox).one()
    return LedgerGauges(
        at=now,
        counts=counts,
        live_by_channel=by_channel,
        due=int(due_count),
        oldest_due_at=oldest_due,
        stuck=int(stuck_count),
        outbox=int(outbox_count),
        oldest_outbox_at=oldest_outbox,
    )


class Reads:
    """The store's reading methods: each one read transaction (``_read``), or one snapshot.

    Mixed into :class:`~chimeway_core.ledger.store.SQLStore`, which provides
    the engine, its dialect and its read transactions.
    """

    engine: Engine
    _dialect: Dialect

    def _read(self) -> AbstractContextManager[Connection]:
        raise NotImplementedError  # pragma: no cover - SQLStore provides it

    def resendable(
        self,
        *,
        since: datetime,
        channel: str | None = None,
        reason: str | None = None,
        limit: int | None = None,
    ) -> list[UUID]:
        """Ids of the cancelled and suppressed deliveries last written at or after ``since``.

        Oldest first; only ``channel`` and only ``reason`` when given. Copies
        made by :meth:`resend` are left out, so running a bulk resend again
        resends nothing new: a copy is resent by its id.
        """
        query = resendable_query(since, channel, reason, limit)
        with self._read() as conn:
            return list(conn.scalars(query))

    def get(self, delivery_id: UUID) -> Delivery | None:
        """The delivery with this id, or ``None``."""
        check_id(delivery_id)
        with self._read() as conn:
            return get(conn, delivery_id)

    def history(self, delivery_id: UUID) -> DeliveryHistory | None:
        """The delivery with all its attempts and journal entries, oldest first; or ``None``.

        Read in one transaction, so the three parts are consistent on
        PostgreSQL and SQLite alike.
        """
        check_id(delivery_id)
        with self._read() as conn:
            return history(conn, delivery_id)

    def expired_claims(self, *, now: datetime, limit: int = 100) -> list[Claim]:
        """Live deliveries whose lease expired with an attempt still in flight.

        The worker died mid-call. Each is returned as the :class:`Claim` it
        held (delivery snapshot + in-flight attempt), so the rescuer can call
        :meth:`record_attempt` with an ``unknown`` outcome, fenced on the same
        version. Oldest expiry first.
        """
        check_limit("limit", limit)
        now = aware(now, "now")
        with self._read() as conn:
            return expired_claims(conn, now, limit)

    def due(
        self, *, now: datetime, limit: int = 500, not_touched_since: datetime | None = None
    ) -> list[Delivery]:
        """Live deliveries due at ``now`` that nobody holds, earliest first.

        "Nobody holds": no lease, or an expired lease with no attempt in
        flight (in-flight ones are :meth:`expired_claims`). With
        ``not_touched_since``, only those not written since then: the rescuer
        re-enqueues deliveries that may have lost their job.
        """
        check_limit("limit", limit)
        query = due_query(aware(now, "now"), limit, not_touched_since)
        with self._read() as conn:
            return deliveries(conn, query)

    def counts(self) -> dict[tuple[DeliveryStatus, str | None], int]:
        """How many deliveries there are per ``(status, reason)``."""
        with self._read() as conn:
            return count_by_status(conn)

    def gauges(self, *, now: datetime, timeout: float | None = None) -> LedgerGauges:
        """The ledger's health at ``now``, read as one snapshot (for monitoring).

        Counts per status and reason, live deliveries per channel, the due
        backlog and its oldest, stuck attempts and the outbox: five
        aggregate queries, the counts one over every delivery (by the
        ``(status, reason)`` index), the others over live deliveries and the
        outbox only. On PostgreSQL they run in one ``REPEATABLE READ``
        transaction (one snapshot for all five) and, with ``timeout``
        (seconds), are cancelled past it (``statement_timeout``): a database
        that hangs raises instead of holding the caller (a timeout past
        PostgreSQL's largest, about 24.8 days, waits that long). On SQLite a read
        transaction is one snapshot already, and readers do not wait for
        writers; ``timeout`` is not needed there.
        """
        now = aware(now, "now")
        if timeout is not None:
            timeout = seconds("timeout", timeout, positive=True)
        with self._dialect.snapshot(self.engine, timeout) as conn:
            return gauges(conn, now)

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
        """The deliveries matching every filter given, newest first, at most ``limit``.

        Newest by ``created_at`` (its index orders them), then by id. A filter
        of the wrong kind raises :class:`TypeError` (``status`` must be a
        :class:`~chimeway_core.states.DeliveryStatus`), ``limit`` below 1
        :class:`ValueError`.
        """
        query = find_query(
            status=status,
            reason=reason,
            channel=channel,
            recipient=recipient,
            idempotency_key=idempotency_key,
            created_since=created_since,
            limit=limit,
        )
        with self._read() as conn:
            return deliveries(conn, query)

    def oldest_non_terminal(self) -> Delivery | None:
        """The live delivery created first, or ``None`` (a health signal)."""
        with self._read() as conn:
            return oldest_non_terminal(conn)

    def count_recent_attempts(self, *, channel: str, recipient: str, since: datetime) -> int:
        """Attempts started at or after ``since`` to this channel and recipient.

        Counted in the database, so a rate limit holds across workers.
        """
        with self._read() as conn:
            return count_recent_attempts(conn, channel, recipient, since)

    def count_recipient_attempts(
        self, *, recipient: str, since: datetime, channels: Iterable[str] | None = None
    ) -> int:
        """Attempts started at or after ``since`` to this recipient on any of ``channels``.

        Every channel when ``channels`` is ``None``. Counted in the database,
        so a cap across channels holds across workers.
        """
        if isinstance(channels, str):
            raise TypeError(f"channels must be a collection of channel names, not {channels!r}")
        chosen = None if channels is None else frozenset(channels)
        with self._read() as conn:
            return count_recipient_attempts(conn, recipient, chosen, since)

    def count_prunable(self, *, before: datetime) -> int:
        """How many deliveries :meth:`prune` with this ``before`` would delete now."""
        before = aware(before, "before")
        with self._read() as conn:
            return retention.count_prunable(conn, before)

    def outbox_size(self) -> int:
        """How many committed deliveries wait for the relay."""
        with self._read() as conn:
            return outbox_rows(conn)
