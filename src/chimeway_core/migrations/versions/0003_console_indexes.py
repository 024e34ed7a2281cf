"""The console's indexes: each delivery-list filter with ``(created_at, id)``; attempts by start.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07

The web console lists deliveries newest first under a filter (status, reason,
channel, recipient, notification key, idempotency key) a page at a time, keyset
on ``(created_at, id)``. With an index on ``(filter, created_at, id)`` PostgreSQL
reads one page from one index range however large the ledger (and however many
deliveries one batch notified at one instant); without, it reads every
matching row and sorts. The index on ``created_at`` alone gains ``id`` for the
same reason.
Its overview counts the attempts of the last hour and day by ``started_at``.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The columns, as chimeway_core.ledger.schema.CONSOLE_FILTERS names them when
# this revision was written (a migration never changes with the code).
_COLUMNS = ("status", "reason", "channel", "recipient", "notification_key", "idempotency_key")


def _namespace() -> str | None:
    # As in 0002: the history sits beside the tables, so its schema is theirs.
    schema: str | None = op.get_context().version_table_schema
    return schema


def upgrade() -> None:
    """Index each console filter with ``(created_at, id)``, ``created_at`` with ``id``, attempts."""
    op.drop_index(
        "ix_chimeway_deliveries_created_at", table_name="chimeway_deliveries", schema=_namespace()
    )
    op.create_index(
        "ix_chimeway_deliveries_created_at",
        "chimeway_deliveries",
        ["created_at", "id"],
        schema=_namespace(),
    )
    for column in _COLUMNS:
        op.create_index(
            f"ix_chimeway_deliveries_{column}_created_at",
            "chimeway_deliveries",
            [column, "created_at", "id"],
            schema=_namespace(),
        )
    op.create_index(
        "ix_chimeway_delivery_attempts_started_at",
        "chimeway_delivery_attempts",
        ["started_at"],
        schema=_namespace(),
    )


def downgrade() -> None:
    """Drop the console's indexes (the rows stay as they are)."""
    op.drop_index(
        "ix_chimeway_delivery_attempts_started_at",
        table_name="chimeway_delivery_attempts",
        schema=_namespace(),
    )
    for column in _COLUMNS:
        op.drop_index(
            f"ix_chimeway_deliveries_{column}_created_at",
            table_name="chimeway_deliveries",
            schema=_namespace(),
        )
    op.drop_index(
        "ix_chimeway_deliveries_created_at", table_name="chimeway_deliveries", schema=_namespace()
    )
    op.create_index(
        "ix_chimeway_deliveries_created_at",
        "chimeway_deliveries",
        ["created_at"],
        schema=_namespace(),
    )
