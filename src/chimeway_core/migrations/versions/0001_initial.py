"""The initial ledger: deliveries, attempts, journal, outbox.

Revision ID: 0001
Revises:
Create Date: 2026-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create the four chimeway tables and their indexes."""
    op.create_table(
        "chimeway_deliveries",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("channel", sa.String(200), nullable=False),
        sa.Column("recipient", sa.String(1000), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=True),
        sa.Column("notification_key", sa.String(255), nullable=True),
        sa.Column("idempotency_key", sa.String(255), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("reason", sa.String(255), nullable=True),
        sa.Column("attempt_count", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("scheduled_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=True),
        sa.Column("lease_owner", sa.String(255), nullable=True),
        sa.Column("lease_expires_at", _TS, nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("deferral_count", sa.Integer(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_chimeway_deliveries"),
        sa.UniqueConstraint(
            "channel",
            "idempotency_key",
            name="uq_chimeway_deliveries_channel_idempotency_key",
        ),
    )
    op.create_index(
        "ix_chimeway_deliveries_status_scheduled_at",
        "chimeway_deliveries",
        ["status", "scheduled_at"],
    )
    op.create_index(
        "ix_chimeway_deliveries_status_reason", "chimeway_deliveries", ["status", "reason"]
    )
    op.create_index(
        "ix_chimeway_deliveries_lease_expires_at", "chimeway_deliveries", ["lease_expires_at"]
    )
    op.create_index(
        "ix_chimeway_deliveries_channel_recipient",
        "chimeway_deliveries",
        ["channel", "recipient"],
    )
    op.create_index("ix_chimeway_deliveries_created_at", "chimeway_deliveries", ["created_at"])

    op.create_table(
        "chimeway_delivery_attempts",
        sa.Column("delivery_id", sa.Uuid(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("started_at", _TS, nullable=False),
        sa.Column("finished_at", _TS, nullable=True),
        sa.Column("outcome", sa.String(32), nullable=True),
        sa.Column("error_class", sa.String(100), nullable=True),
        sa.Column("provider_response", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["chimeway_deliveries.id"],
            name="fk_chimeway_delivery_attempts_delivery_id_chimeway_deliveries",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("delivery_id", "number", name="pk_chimeway_delivery_attempts"),
    )

    op.create_table(
        "chimeway_delivery_journal",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("delivery_id", sa.Uuid(), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("event", sa.String(32), nullable=True),
        sa.Column("from_status", sa.String(32), nullable=True),
        sa.Column("to_status", sa.String(32), nullable=True),
        sa.Column("reason", sa.String(255), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["chimeway_deliveries.id"],
            name="fk_chimeway_delivery_journal_delivery_id_chimeway_deliveries",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_chimeway_delivery_journal"),
    )
    op.create_index(
        "ix_chimeway_delivery_journal_delivery_id",
        "chimeway_delivery_journal",
        ["delivery_id", "id"],
    )

    op.create_table(
        "chimeway_outbox",
        sa.Column("delivery_id", sa.Uuid(), nullable=False),
        sa.Column("run_at", _TS, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["chimeway_deliveries.id"],
            name="fk_chimeway_outbox_delivery_id_chimeway_deliveries",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("delivery_id", name="pk_chimeway_outbox"),
    )
    op.create_index("ix_chimeway_outbox_created_at", "chimeway_outbox", ["created_at"])


def downgrade() -> None:
    """Drop the four chimeway tables (and every delivery in them)."""
    op.drop_table("chimeway_outbox")
    op.drop_table("chimeway_delivery_journal")
    op.drop_table("chimeway_delivery_attempts")
    op.drop_table("chimeway_deliveries")
