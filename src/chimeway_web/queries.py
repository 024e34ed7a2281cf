"""What the console reads: deliveries a page at a time, the overview, each channel's health.

Theory of operation
-------------------
Every function takes the :class:`~chimeway_core.store.SQLStore` and reads on
its engine, which runs each statement in the store's namespace (a schema on
PostgreSQL, an attached file on SQLite): a console over a namespaced store
sees only that namespace's deliveries.

The delivery list is keyset-paginated: newest first by ``(created_at, id)``,
and a page after another starts strictly below the last row it showed
(:class:`Cursor`). Nothing is skipped or shown twice across pages, and a page
deep in a large ledger costs what the first one does: each page reads
ranges of indexes that end in ``(created_at, id)`` (migration 0003), one
range, or one per value of a column the filter leaves open, merged:

- no filter, a time range, a recipient, a notification key: one range;
- a status: one range of ``(status, reason, ...)`` per reason that status
  has (found by stepping the index, one row a step); a reason: one per status;
- an idempotency key: one lookup per channel in the unique
  ``(channel, idempotency_key)`` (the channels found the same way);
- a channel alone walks ``created_at`` newest first, its rows filtered: a
  channel is a large share of the ledger, so a page is near. The deliveries
  carry no index of a channel's own, as every index on them is paid by every
  write of a delivery. Aggregates (counts, attempts per outcome,
the chart's buckets, errors grouped by message) run in the database, over
attempts started inside their window only (``started_at``'s index).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from uuid import UUID

import attrs
from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    and_,
    case,
    func,
    literal,
    select,
    tuple_,
    union_all,
)

from chimeway_core.ledger import statements as sql
from chimeway_core.ledger.rows import delivery_from_row
from chimeway_core.outcomes import Outcome
from chimeway_core.records import RESEND_KEY_PREFIX, Delivery, JournalKind, LedgerGauges
from chimeway_core.states import RESENDABLE_STATUSES, DeliveryStatus
from chimeway_core.store import SQLStore

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "SERIES_BUCKETS",
    "ChannelErrors",
    "ChannelHealth",
    "Cursor",
    "DeliveryFilters",
    "Overview",
    "Page",
    "channel_health",
    "count_resendable",
    "list_deliveries",
    "overview",
    "resendable_ids",
]

#: Rows per page when the request names none, and the most it may name.
DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 200
#: How many buckets the overview's attempts chart has (over the last hour).
SERIES_BUCKETS: Final = 12


@attrs.frozen
class Cursor:
    """Where a page ends: the last row's ``created_at`` and ``id``.

    :meth:`encode` makes the opaque token the list's ``after`` parameter
    carries; :meth:`decode` reads it back and raises :class:`ValueError` for
    anything it did not make.
    """

    created_at: datetime
    id: UUID

    def encode(self) -> str:
        """The token, URL-safe base64 of ``created_at|id``."""
        raw = f"{self.created_at.astimezone(UTC).isoformat()}|{self.id.hex}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Cursor:
        """The cursor ``token`` encodes; :class:`ValueError` if it is not one."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            at, _, hexid = raw.partition("|")
            created_at = datetime.fromisoformat(at)
            delivery_id = UUID(hex=hexid)
        except (ValueError, binascii.Error, UnicodeDecodeError) as error:
            raise ValueError(f"not a page cursor: {token!r}") from error
        if created_at.tzinfo is None:
            raise ValueError(f"not a page cursor: {token!r}")
        return cls(created_at.astimezone(UTC), delivery_id)


@attrs.frozen(kw_only=True)
class DeliveryFilters:
    """The delivery list's filters; ``None`` means "any". All given must match.

    ``since`` and ``until`` bound ``created_at`` (``since`` inclusive,
    ``until`` exclusive) and must be tz-aware.
    """

    status: DeliveryStatus | None = None
    reason: str | None = None
    channel: str | None = None
    recipient: str | None = None
    notification_key: str | None = None
    idempotency_key: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __attrs_post_init__(self) -> None:
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and (value.tzinfo is None or value.utcoffset() is None):
                raise ValueError(f"{name} must be a tz-aware datetime")

    def apply(self, query: Select[Any]) -> Select[Any]:
        """``query`` (over the deliveries table) narrowed to the rows these filters match."""
        columns = {
            "reason": sql.D.reason,
            "channel": sql.D.channel,
            "recipient": sql.D.recipient,
            "notification_key": sql.D.notification_key,
            "idempotency_key": sql.D.idempotency_key,
        }
        for name, column in columns.items():
            value = getattr(self, name)
            if value is not None:
                query = query.where(column == value)
        if self.status is not None:
            query = query.where(sql.D.status == self.status.value)
        if self.since is not None:
            query = query.where(sql.D.created_at >= self.since)
        if self.until is not None:
            query = query.where(sql.D.created_at < self.until)
        return query


@attrs.frozen
class Page:
    """One page of the delivery list, newest first; ``next`` is ``None`` on the last."""

    deliveries: tuple[Delivery, ...]
    next: Cursor | None


def list_deliveries(
    store: SQLStore,
    filters: DeliveryFilters,
    *,
    after: Cursor | None = None,
    limit: int = DEFAULT_LIMIT,
) -> Page:
    """The deliveries matching ``filters``, newest first, starting below ``after``.

    At most ``limit`` (1 to :data:`MAX_LIMIT`, else :class:`ValueError`).
    Ordered by ``created_at`` then ``id``, both descending; the page's
    ``next`` is the cursor of its last row when more rows follow it.
    """
    if type(limit) is not int or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be an int from 1 to {MAX_LIMIT}, got {limit!r}")
    with store.engine.connect() as conn:
        ranges = [
            _page_query(filters, narrowed, after, limit) for narrowed in _ranges(conn, filters)
        ]
        if not ranges:
            rows = []
        else:
            if len(ranges) == 1:
                query = ranges[0]
            else:
                merged = union_all(*(select(*r.subquery().c) for r in ranges)).subquery()
                query = (
                    select(*merged.c)
                    .order_by(merged.c.created_at.desc(), merged.c.id.desc())
                    .limit(limit + 1)
                )
            rows = [delivery_from_row(row) for row in conn.execute(query)]
    more = len(rows) > limit
    rows = rows[:limit]
    following = Cursor(rows[-1].created_at, rows[-1].id) if more else None
    return Page(tuple(rows), following)


#: Where a range is narrowed to one value of a column the filters leave open.
_Narrowing = tuple[ColumnElement[bool], ...]


def _ranges(conn: Connection, filters: DeliveryFilters) -> list[_Narrowing]:
    """One narrowing per index range a page under ``filters`` reads (none: nothing matches).

    A status alone ranges over each of its reasons; a reason alone over each
    status; an idempotency key alone over each channel. The values present
    are found by stepping an index one row a step (:func:`_values`).
    """
    if filters.status is not None and filters.reason is None:
        status = sql.D.status == filters.status.value
        reasons = _values(conn, sql.D.reason, status)
        narrowed: list[_Narrowing] = [(sql.D.reason == reason,) for reason in reasons]
        # No reason is a range too: an empty one costs a seek, a probe as much.
        return [*narrowed, (sql.D.reason.is_(None),)]
    if filters.reason is not None and filters.status is None:
        return [(sql.D.status == status.value,) for status in DeliveryStatus]
    if filters.idempotency_key is not None and filters.channel is None:
        return [(sql.D.channel == channel,) for channel in _values(conn, sql.D.channel)]
    return [()]


def _values(conn: Connection, column: ColumnElement[Any], *where: ColumnElement[bool]) -> list[Any]:
    """The distinct non-null values of ``column`` under ``where``, one index step each.

    Each step asks for the least value above the last one found: a
    ``LIMIT 1`` read off an index that starts with ``where``'s columns and
    then ``column``, however many rows hold each value.
    """
    found: list[Any] = []
    while True:
        query = select(column).where(*where, column.is_not(None))
        if found:
            query = query.where(column > found[-1])
        value = conn.execute(query.order_by(column).limit(1)).scalar()
        if value is None:
            return found
        found.append(value)


def _page_query(
    filters: DeliveryFilters, narrowed: _Narrowing, after: Cursor | None, limit: int
) -> Select[Any]:
    """The first ``limit + 1`` rows matching ``filters`` and ``narrowed`` below ``after``."""
    query = filters.apply(select(sql.DELIVERIES)).where(*narrowed)
    if after is not None:
        # The plain bound lets an index on (filter, created_at) start its range
        # there; the row comparison breaks ties within one created_at by id.
        query = query.where(
            sql.D.created_at <= after.created_at,
            tuple_(sql.D.created_at, sql.D.id)
            < tuple_(
                literal(after.created_at, sql.D.created_at.type), literal(after.id, sql.D.id.type)
            ),
        )
    return query.order_by(sql.D.created_at.desc(), sql.D.id.desc()).limit(limit + 1)


def _resendable(filters: DeliveryFilters) -> Select[Any]:
    """Ids of what a bulk resend of ``filters`` would resend: unsent, not resent, no copies."""
    resent = select(sql.J.id).where(
        sql.J.delivery_id == sql.D.id, sql.J.kind == JournalKind.RESENT.value
    )
    return filters.apply(
        select(sql.D.id).where(
            sql.D.status.in_([status.value for status in sorted(RESENDABLE_STATUSES)]),
            ~sql.D.idempotency_key.startswith(RESEND_KEY_PREFIX, autoescape=True),
            ~resent.exists(),
        )
    )


def count_resendable(store: SQLStore, filters: DeliveryFilters) -> int:
    """How many deliveries matching ``filters`` a bulk resend would resend (the dry run).

    Those that ended unsent (cancelled, suppressed), were not resent yet,
    and are no resend's copy themselves: a copy is resent by its own id.
    """
    query = select(func.count()).select_from(_resendable(filters).subquery())
    with store.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def resendable_ids(store: SQLStore, filters: DeliveryFilters, *, limit: int) -> list[UUID]:
    """The ids :func:`count_resendable` counts, oldest first, at most ``limit``."""
    query = _resendable(filters).order_by(sql.D.created_at, sql.D.id).limit(limit)
    with store.engine.connect() as conn:
        return list(conn.scalars(query))


@attrs.frozen(kw_only=True)
class Overview:
    """The overview page's numbers at ``gauges.at``.

    ``attempts_hour`` and ``attempts_day`` count the attempts started in the
    last hour and day per outcome (``None``: still in flight). ``series`` is
    the last hour in :data:`SERIES_BUCKETS` equal buckets, oldest first:
    ``(bucket start, {outcome: count})``.
    """

    gauges: LedgerGauges
    attempts_hour: Mapping[Outcome | None, int]
    attempts_day: Mapping[Outcome | None, int]
    series: tuple[tuple[datetime, Mapping[Outcome | None, int]], ...]


def _outcome(value: str | None) -> Outcome | None:
    return None if value is None else Outcome(value)


def overview(store: SQLStore, *, now: datetime) -> Overview:
    """The ledger's gauges at ``now`` (:meth:`SQLStore.gauges`) and its recent attempts."""
    gauges = store.gauges(now=now)
    hour, day = now - timedelta(hours=1), now - timedelta(days=1)
    step = timedelta(hours=1) / SERIES_BUCKETS
    starts = [hour + step * i for i in range(SERIES_BUCKETS)]
    # The bucket an attempt of the last hour falls in (-1: earlier that day).
    bucket = case(
        *((sql.A.started_at >= start, i) for i, start in reversed(list(enumerate(starts)))),
        else_=-1,
    )
    per_outcome = (
        select(bucket.label("bucket"), sql.A.outcome, func.count())
        .where(sql.A.started_at >= day, sql.A.started_at <= now)
        .group_by(bucket, sql.A.outcome)
    )
    hourly: dict[Outcome | None, int] = {}
    daily: dict[Outcome | None, int] = {}
    buckets: list[dict[Outcome | None, int]] = [{} for _ in starts]
    with store.engine.connect() as conn:
        for index, outcome_value, count in conn.execute(per_outcome):
            outcome = _outcome(outcome_value)
            daily[outcome] = daily.get(outcome, 0) + count
            if index >= 0:
                hourly[outcome] = hourly.get(outcome, 0) + count
                buckets[index][outcome] = buckets[index].get(outcome, 0) + count
    return Overview(
        gauges=gauges,
        attempts_hour=hourly,
        attempts_day=daily,
        series=tuple(zip(starts, buckets, strict=True)),
    )


@attrs.frozen(kw_only=True)
class ChannelErrors:
    """Failed attempts on one channel with the same error class and message."""

    channel: str
    error_class: str | None
    error: str
    count: int
    last_seen: datetime


@attrs.frozen(kw_only=True)
class ChannelHealth:
    """One channel's attempts started since ``since``, per outcome, and its recent errors."""

    channel: str
    since: datetime
    outcomes: Mapping[Outcome | None, int]
    errors: tuple[ChannelErrors, ...]

    @property
    def finished(self) -> int:
        """Attempts with an outcome (in-flight ones left out)."""
        return sum(count for outcome, count in self.outcomes.items() if outcome is not None)

    def rate(self, outcome: Outcome) -> float | None:
        """The share of finished attempts with ``outcome``, or ``None`` when none finished."""
        finished = self.finished
        return None if finished == 0 else self.outcomes.get(outcome, 0) / finished


def channel_health(
    store: SQLStore,
    *,
    now: datetime,
    window: timedelta = timedelta(hours=24),
    channels: Sequence[str] = (),
    errors_per_channel: int = 10,
) -> list[ChannelHealth]:
    """Each channel's attempts in the ``window`` before ``now``, by outcome, with its errors.

    One entry per channel in ``channels`` (the engine's, shown even when
    idle) and per channel with attempts in the window, sorted by name. Its
    errors are the failed or unknown attempts grouped by error class and
    message, most recently seen first, at most ``errors_per_channel``.
    """
    since = now - window
    joined = sql.ATTEMPTS.join(sql.DELIVERIES, sql.A.delivery_id == sql.D.id)
    recent = and_(sql.A.started_at >= since, sql.A.started_at <= now)
    counts = (
        select(sql.D.channel, sql.A.outcome, func.count())
        .select_from(joined)
        .where(recent)
        .group_by(sql.D.channel, sql.A.outcome)
    )
    last_seen = func.max(func.coalesce(sql.A.finished_at, sql.A.started_at))
    errors = (
        select(sql.D.channel, sql.A.error_class, sql.A.error, func.count(), last_seen)
        .select_from(joined)
        .where(recent, sql.A.error.is_not(None))
        .group_by(sql.D.channel, sql.A.error_class, sql.A.error)
        .order_by(last_seen.desc())
    )
    outcomes: dict[str, dict[Outcome | None, int]] = {name: {} for name in channels}
    grouped: dict[str, list[ChannelErrors]] = {}
    with store.engine.connect() as conn:
        for channel, outcome_value, count in conn.execute(counts):
            outcomes.setdefault(channel, {})[_outcome(outcome_value)] = count
        for channel, error_class, error, count, seen in conn.execute(errors):
            found = grouped.setdefault(channel, [])
            if len(found) < errors_per_channel:
                found.append(
                    ChannelErrors(
                        channel=channel,
                        error_class=error_class,
                        error=error,
                        count=count,
                        last_seen=_aware(seen),
                    )
                )
    return [
        ChannelHealth(
            channel=name,
            since=since,
            outcomes=outcomes[name],
            errors=tuple(grouped.get(name, ())),
        )
        for name in sorted(outcomes)
    ]


def _aware(value: datetime | str) -> datetime:
    # max() over a UTCDateTime column comes back untyped on SQLite: plain text
    # or a naive datetime, always UTC.
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
