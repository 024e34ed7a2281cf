"""Hand-written queue jobs the benchmarks compare chimeway's against.

``anchor_a_job`` is anchor A's worker transaction as a user would write it
for RQ or Celery without chimeway: select the delivery, insert an attempt,
update its status, one commit. The database URL comes from the environment
(``BENCH_ANCHOR_DB``) so the job's only argument is the delivery id, like
chimeway's. Each process (a forked RQ work horse, a prefork child) builds its
own engine: no connection crosses a fork.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

from sqlalchemy import Engine, create_engine, text

ANCHOR_DB_ENV = "BENCH_ANCHOR_DB"

_SELECT = text("SELECT id, status FROM anchor_deliveries WHERE id=:id")
_INSERT_ATTEMPT = text("INSERT INTO anchor_attempts VALUES (:id, 1, 'succeeded', :now)")
_UPDATE = text(
    "UPDATE anchor_deliveries SET status='succeeded', attempt_count=1, updated_at=:now WHERE id=:id"
)
_engine: tuple[int, Engine] | None = None


def anchor_engine() -> Engine:
    """This process's engine on ``BENCH_ANCHOR_DB``, made on first use after a fork."""
    global _engine  # noqa: PLW0603 - one engine per process, as a user's job module has
    if _engine is None or _engine[0] != os.getpid():
        _engine = (os.getpid(), create_engine(os.environ[ANCHOR_DB_ENV]))
    return _engine[1]


def anchor_a_job(ident: str) -> str:
    """Anchor A's worker transaction for one delivery id: select, insert attempt, update."""
    now = datetime.now(UTC).isoformat()
    with anchor_engine().begin() as conn:
        row = conn.execute(_SELECT, {"id": ident}).one()
        conn.execute(_INSERT_ATTEMPT, {"id": row.id, "now": now})
        conn.execute(_UPDATE, {"id": row.id, "now": now})
    return "ok"
