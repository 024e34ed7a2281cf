"""Keyset pages newest first: indexes that end in ``(created_at, id)``; attempts by start.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07

The web console lists deliveries newest first, a page at a time, keyset on
``(created_at, id)``. With ``(created_at, id)`` after an equality prefix,
PostgreSQL reads one page from one index range however large the ledger (and
however many deliveries one batch notified at one instant); without, it
reads every matching row and sorts.

Every index on the deliveries is maintained by every write of a delivery, so
three are rebuilt rather than added: ``(created_at)`` gains ``id``;
``(status, reason)`` gains ``(created_at, id)``; ``(channel, recipient)``
becomes ``(recipient, created_at, id, channel)``, which still answers the
rate limit's recipient and channel. One is added, ``(notification_key,
created_at, id)`` over the deliveries that have one: no other index reaches
a notification key. The overview counts the attempts of the last hour and
day by ``started_at``, which gains an index.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As chimeway_core.ledger.schema.PAGED_INDEXES reads when this revision was
# written (a migration never changes with the code): old name and columns,
# new name and columns.
_RESHAPED = (
    (
        ("ix_chimeway_deliveries_created_at", ("created_at",)),
        ("ix_chimeway_deliveries_created_at", ("created_at", "id")),
    ),
    (
        ("ix_chimeway_deliveries_status_reason", ("status", "reason")),
        ("ix_chimeway_deliveries_status_reason", ("status", "reason", "created_at", "id")),
    ),
    (
        ("ix_chimeway_deliveries_channel_recipient", ("channel", "recipient")),
        (
            "ix_chimeway_deliveries_recipient_created_at",
            ("recipient", "created_at", "id", "channel"),
        ),
    ),
)
_ADDED = (
    "ix_chimeway_deliveries_notification_key_created_at",
    ("notification_key", "created_at", "id"),
)
_ATTEMPTS_STARTED_AT = "ix_chimeway_delivery_attempts_started_at"


def _namespace() -> str | None:
    # As in 0002: the history sits beside the tables, so its schema is theirs.
    schema: str | None = op.get_context().version_table_schema
    return schema


def _swap(drop: str, create: tuple[str, tuple[str, ...]]) -> None:
    op.drop_index(drop, table_name="chimeway_deliveries", schema=_namespace())
    name, columns = create
    op.create_index(name, "chimeway_deliveries", list(columns), schema=_namespace())


def upgrade() -> None:
    """Rebuild three deliveries' indexes to end in ``(created_at, id)``, add one; index attempts."""
    for (old_name, _), new in _RESHAPED:
        _swap(old_name, new)
    name, columns = _ADDED
    # Partial: a delivery with no notification key writes no entry here.
    where = sa.text("notification_key IS NOT NULL")
    op.create_index(
        name,
        "chimeway_deliveries",
        list(columns),
        schema=_namespace(),
        postgresql_where=where,
        sqlite_where=where,
    )
    op.create_index(
        _ATTEMPTS_STARTED_AT, "chimeway_delivery_attempts", ["started_at"], schema=_namespace()
    )


def downgrade() -> None:
    """Put the indexes back as 0002 had them (rows stay)."""
    op.drop_index(
        _ATTEMPTS_STARTED_AT, table_name="chimeway_delivery_attempts", schema=_namespace()
    )
    op.drop_index(_ADDED[0], table_name="chimeway_deliveries", schema=_namespace())
    for old, (new_name, _) in _RESHAPED:
        _swap(new_name, old)
