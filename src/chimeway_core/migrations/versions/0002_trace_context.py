"""The trace a delivery was notified in: ``chimeway_deliveries.trace_context``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _namespace() -> str | None:
    # ALTER TABLE names its table as written: the connection's schema
    # translation does not reach it. A namespace's history sits beside its
    # tables (chimeway's env.py), so the history's schema is the tables' too.
    schema: str | None = op.get_context().version_table_schema
    return schema


def upgrade() -> None:
    """Add the nullable ``trace_context`` column (existing deliveries have none)."""
    with op.batch_alter_table("chimeway_deliveries", schema=_namespace()) as batch:
        batch.add_column(sa.Column("trace_context", sa.String(512), nullable=True))


def downgrade() -> None:
    """Drop ``trace_context`` (deliveries keep everything else)."""
    with op.batch_alter_table("chimeway_deliveries", schema=_namespace()) as batch:
        batch.drop_column("trace_context")
