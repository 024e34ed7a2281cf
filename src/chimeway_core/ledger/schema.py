"""The delivery ledger's tables, as typed SQLAlchemy declarative models.

Theory of operation
-------------------
Four tables, all prefixed ``chimeway_`` so they can live in an application's
own database:

``chimeway_deliveries``
    One row per delivery: the source of truth for its status. ``version`` is
    a fencing counter bumped by every write; every write of the store is a
    compare-and-set on it.
``chimeway_delivery_attempts``
    One row per channel call, written *before* the call (``outcome`` NULL: in
    flight) and completed after it. ``(delivery_id, number)`` is the primary
    key, numbers are contiguous from 1.
``chimeway_delivery_journal``
    One row per status transition and per policy decision: why a delivery is
    where it is.
``chimeway_outbox``
    Deliveries committed but not yet handed to a queue.

:data:`metadata` is public: include it in your own Alembic environment's
``target_metadata`` (or apply the shipped migration with
:func:`chimeway_core.migrations.upgrade`). Constraint and index names are
fixed by a naming convention so migrations and ``create_all`` agree.

All datetime columns use :class:`UTCDateTime`: values go in tz-aware and come
back tz-aware UTC on every database, including SQLite, which has no time zones.
Enum-valued columns (status, kind, outcome) store the enum's string value; the
store converts them back.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine

__all__ = [
    "NAMING_CONVENTION",
    "AttemptRow",
    "Base",
    "DeliveryRow",
    "JournalRow",
    "OutboxRow",
    "UTCDateTime",
    "metadata",
]

#: Names for constraints and indexes, so every database gets the same ones.
NAMING_CONVENTION: Final = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: Column widths; the store validates against them before writing.
CHANNEL_LENGTH: Final = 200
RECIPIENT_LENGTH: Final = 1000
KEY_LENGTH: Final = 255
#: The most attempts a delivery may have: the column's 32-bit integer.
MAX_ATTEMPTS: Final = 2**31 - 1
STATUS_LENGTH: Final = 32
REASON_LENGTH: Final = 255
OWNER_LENGTH: Final = 255
ERROR_CLASS_LENGTH: Final = 100
#: The deliveries' indexes that end in ``(created_at, id)``, for keyset pages
#: newest first (the console's list): migration 0003 rebuilt ``(created_at)``,
#: ``(status, reason)`` and ``(channel, recipient)`` so, and added the
#: notification key's. Every index on the deliveries is maintained by every
#: write of a delivery, so a filter gets one only where no other reaches it
#: (``chimeway_web.queries`` says how each is read); the trailing columns keep
#: the counts by status and reason, and the rate limit's recipient and
#: channel, in the index.
PAGED_INDEXES: Final = {
    "ix_chimeway_deliveries_created_at": ("created_at", "id"),
    "ix_chimeway_deliveries_status_reason": ("status", "reason", "created_at", "id"),
    "ix_chimeway_deliveries_recipient_created_at": ("recipient", "created_at", "id", "channel"),
    "ix_chimeway_deliveries_notification_key_created_at": ("notification_key", "created_at", "id"),
}
#: Indexes that hold only the rows their condition selects: a delivery with
#: no notification key writes no entry to the key's index.
PARTIAL_INDEXES: Final = {
    "ix_chimeway_deliveries_notification_key_created_at": "notification_key IS NOT NULL",
}


def _partial(where: str | None) -> dict[str, Any]:
    """The dialect options that make an index partial on ``where`` (none for ``None``)."""
    if where is None:
        return {}
    return {"postgresql_where": text(where), "sqlite_where": text(where)}


#: A W3C ``traceparent`` is 55 characters; room for a ``tracestate`` after it.
TRACE_CONTEXT_LENGTH: Final = 512


class _SQLiteDateTime(sqlite.DATETIME):
    """SQLite's text timestamp, also read when the driver has parsed it already.

    A connection opened with ``detect_types`` (Django's are) hands back a
    ``DATETIME`` column as a datetime its converter made; it is taken as is.
    """

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        """Parse text as SQLAlchemy does; pass a datetime through."""
        parse = super().result_processor(dialect, coltype)
        if parse is None:
            return None

        def process(value: object) -> Any:
            return value if isinstance(value, datetime) else parse(value)

        return process


# SQLAlchemy's SQLite types are untyped.
_SQLITE_DATETIME: Final = _SQLiteDateTime()  # type: ignore[no-untyped-call]


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is tz-aware UTC on the way in and on the way out.

    Naive datetimes are refused when bound (``ValueError``; the store checks
    earlier and raises its own error). On SQLite, which stores text, the value
    is written as naive UTC and given ``tzinfo=UTC`` again when read (also
    when the connection's own converters parsed it, as Django's do).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        """SQLite's text timestamp that also takes a parsed one; elsewhere the usual."""
        if dialect.name == "sqlite":
            return dialect.type_descriptor(_SQLITE_DATETIME)
        return dialect.type_descriptor(self.impl_instance)

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert to UTC; drop the zone for SQLite, which would store it as text."""
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime bound to a UTC column: {value!r}")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(
        self,
        value: datetime | None,
        dialect: Dialect,  # noqa: ARG002 -- the signature TypeDecorator calls
    ) -> datetime | None:
        """Return the value as tz-aware UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """The declarative base of chimeway's tables (own :class:`MetaData`)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


#: Every chimeway table; put it in your Alembic ``target_metadata``.
metadata: Final = Base.metadata

# SQLite only autoincrements a column declared exactly INTEGER PRIMARY KEY.
_BIGINT_ID = BigInteger().with_variant(Integer(), "sqlite")


class DeliveryRow(Base):
    """One delivery: the source of truth for its status (``chimeway_deliveries``)."""

    __tablename__ = "chimeway_deliveries"
    __table_args__ = (
        UniqueConstraint("channel", "idempotency_key"),
        # "due deliveries": live statuses whose scheduled_at has passed.
        Index("ix_chimeway_deliveries_status_scheduled_at", "status", "scheduled_at"),
        # "stuck deliveries": leases that expired.
        Index("ix_chimeway_deliveries_lease_expires_at", "lease_expires_at"),
        # Pages newest first under each filter (the console); the counts by
        # status and reason; the rate limit's recipient + channel.
        *(
            Index(name, *columns, **_partial(PARTIAL_INDEXES.get(name)))
            for name, columns in PAGED_INDEXES.items()
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid(), primary_key=True)
    channel: Mapped[str] = mapped_column(String(CHANNEL_LENGTH))
    recipient: Mapped[str] = mapped_column(String(RECIPIENT_LENGTH))
    payload: Mapped[Any] = mapped_column(JSON(), nullable=True)
    notification_key: Mapped[str | None] = mapped_column(String(KEY_LENGTH))
    idempotency_key: Mapped[str] = mapped_column(String(KEY_LENGTH))
    status: Mapped[str] = mapped_column(String(STATUS_LENGTH))
    reason: Mapped[str | None] = mapped_column(String(REASON_LENGTH))
    attempt_count: Mapped[int] = mapped_column(Integer())
    max_attempts: Mapped[int] = mapped_column(Integer())
    scheduled_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    lease_owner: Mapped[str | None] = mapped_column(String(OWNER_LENGTH))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    version: Mapped[int] = mapped_column(Integer())
    deferral_count: Mapped[int] = mapped_column(Integer())
    # ``metadata`` is taken on a declarative class; the column keeps the name.
    delivery_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSON())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The trace the notify() call ran in (W3C trace context), for telemetry:
    # not part of the request (two repeats of one request differ in it).
    trace_context: Mapped[str | None] = mapped_column(String(TRACE_CONTEXT_LENGTH))


class AttemptRow(Base):
    """One channel call (``chimeway_delivery_attempts``); ``outcome`` NULL means in flight."""

    __tablename__ = "chimeway_delivery_attempts"
    # The console's attempts per outcome over the last hour and day (0003).
    __table_args__ = (Index("ix_chimeway_delivery_attempts_started_at", "started_at"),)

    delivery_id: Mapped[uuid.UUID] = mapped_column(
        Uuid(), ForeignKey(DeliveryRow.id, ondelete="CASCADE"), primary_key=True
    )
    number: Mapped[int] = mapped_column(Integer(), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    outcome: Mapped[str | None] = mapped_column(String(STATUS_LENGTH))
    error_class: Mapped[str | None] = mapped_column(String(ERROR_CLASS_LENGTH))
    provider_response: Mapped[Any] = mapped_column(JSON(), nullable=True)
    error: Mapped[str | None] = mapped_column(Text())
    worker: Mapped[str | None] = mapped_column(String(OWNER_LENGTH))


class JournalRow(Base):
    """One status transition or policy decision (``chimeway_delivery_journal``)."""

    __tablename__ = "chimeway_delivery_journal"
    __table_args__ = (Index("ix_chimeway_delivery_journal_delivery_id", "delivery_id", "id"),)

    id: Mapped[int] = mapped_column(_BIGINT_ID, primary_key=True, autoincrement=True)
    delivery_id: Mapped[uuid.UUID] = mapped_column(
        Uuid(), ForeignKey(DeliveryRow.id, ondelete="CASCADE")
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    kind: Mapped[str] = mapped_column(String(STATUS_LENGTH))
    event: Mapped[str | None] = mapped_column(String(STATUS_LENGTH))
    from_status: Mapped[str | None] = mapped_column(String(STATUS_LENGTH))
    to_status: Mapped[str | None] = mapped_column(String(STATUS_LENGTH))
    reason: Mapped[str | None] = mapped_column(String(REASON_LENGTH))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON())


class OutboxRow(Base):
    """A committed delivery not yet handed to a queue (``chimeway_outbox``)."""

    __tablename__ = "chimeway_outbox"
    __table_args__ = (Index("ix_chimeway_outbox_created_at", "created_at"),)

    delivery_id: Mapped[uuid.UUID] = mapped_column(
        Uuid(), ForeignKey(DeliveryRow.id, ondelete="CASCADE"), primary_key=True
    )
    run_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
