"""Retention: deleting terminal deliveries once they are old enough.

Theory of operation
-------------------
Only terminal deliveries (``succeeded``, ``cancelled``, ``suppressed``)
created and last written before the cutoff are deleted, each with its
attempts, its journal and any outbox row left (the foreign keys cascade).
Live deliveries are never deleted, however old. The oldest go first (the
``created_at`` index finds them), a batch per transaction, until a batch comes
back short or the limit is reached: a long prune never holds its locks for
long, and one interrupted keeps what it deleted. Where the database can,
rows another transaction holds are skipped, so prunes run side by side.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime

from sqlalchemy import Connection, delete, func, select

from chimeway_core.ledger import statements as sql
from chimeway_core.ledger.dialects import Dialect

__all__ = ["count_prunable", "prune"]


def prune(
    write: Callable[[], AbstractContextManager[Connection]],
    dialect: Dialect,
    *,
    before: datetime,
    batch_size: int,
    limit: int | None,
) -> int:
    """Delete prunable deliveries, ``batch_size`` per ``write()`` transaction; how many."""
    remaining = math.inf if limit is None else limit
    chosen = dialect.skip_locked(sql.prunable(before).order_by(sql.D.created_at))
    total = 0
    while remaining:
        batch = int(min(batch_size, remaining))
        with write() as conn:
            ids = list(conn.execute(chosen.limit(batch)).scalars())
            for chunk in sql.in_chunks(ids):
                conn.execute(delete(sql.DELIVERIES).where(sql.D.id.in_(list(chunk))))
        total += len(ids)
        remaining -= len(ids)
        if len(ids) < batch:
            break
    return total


def count_prunable(conn: Connection, before: datetime) -> int:
    """How many deliveries :func:`prune` with this ``before`` would delete now."""
    query = select(func.count()).select_from(sql.prunable(before).subquery())
    return int(conn.execute(query).scalar_one())
