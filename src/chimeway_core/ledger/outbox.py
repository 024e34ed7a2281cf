"""The outbox: committed deliveries waiting to be handed to the queue.

Theory of operation
-------------------
A create writes an outbox row in the transaction that writes the delivery
(transactional enqueue): once that commits, the delivery is sure to reach
the queue. The process that notified hands the id over itself and deletes
its rows in batches (:func:`delete`); the relay (:func:`relay`) hands over
whatever is left, in one transaction per batch: rows are selected (skipping
rows another relay holds, where the database can), ``send`` is called, the
rows are deleted, and the transaction commits. If ``send`` raises,
everything rolls back and the rows stay for the next relay, so a crash
between commit and enqueue loses nothing; concurrent relays never hand out
the same row twice. A claim deletes its delivery's row too
(:func:`chimeway_core.ledger.statements.cleared_outbox`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from uuid import UUID

import attrs
from sqlalchemy import Connection, delete, func, select

from chimeway_core.ledger import statements as sql
from chimeway_core.ledger.dialects import Dialect
from chimeway_core.ledger.validation import aware

__all__ = ["OutboxItem", "relay", "size"]


@attrs.frozen
class OutboxItem:
    """A committed delivery waiting to be handed to the queue, due at ``run_at``."""

    delivery_id: UUID
    run_at: datetime
    channel: str
    """The delivery's channel, which decides its queue (``Chimeway(routes=...)``)."""


def relay(
    conn: Connection,
    dialect: Dialect,
    send: Callable[[Sequence[OutboxItem]], None],
    *,
    batch_size: int,
    created_before: datetime | None,
    due_before: datetime | None,
) -> int:
    """Hand up to ``batch_size`` rows to ``send`` and delete them, on ``conn``; how many."""
    query = (
        select(sql.OUT.delivery_id, sql.OUT.run_at, sql.D.channel)
        .join(sql.DELIVERIES, sql.D.id == sql.OUT.delivery_id)
        .order_by(sql.OUT.created_at)
        .limit(batch_size)
    )
    if created_before is not None:
        query = query.where(sql.OUT.created_at < aware(created_before, "created_before"))
    if due_before is not None:
        query = query.where(sql.OUT.run_at < aware(due_before, "due_before"))
    # Only the outbox rows: relays skip each other's, never a delivery row.
    query = dialect.skip_locked(query, of=sql.OUTBOX)
    items = [OutboxItem(row.delivery_id, row.run_at, row.channel) for row in conn.execute(query)]
    if not items:
        return 0
    send(items)
    for chunk in sql.in_chunks(items):
        conn.execute(
            delete(sql.OUTBOX).where(sql.OUT.delivery_id.in_([item.delivery_id for item in chunk]))
        )
    return len(items)


def size(conn: Connection) -> int:
    """How many committed deliveries wait for the relay."""
    return int(conn.execute(select(func.count()).select_from(sql.OUTBOX)).scalar_one())
