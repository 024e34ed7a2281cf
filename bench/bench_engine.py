"""notify -> terminal through the engine on the memory backend, next to hand-written anchors.

For SQLite (file, WAL) and PostgreSQL (a throwaway database, if reachable),
in the same run, medians over several runs:

- chimeway: ``notify()`` each delivery, then the memory backend runs every
  job through ``perform()`` against a channel that always sends.
- anchor A: what a careful user writes without chimeway — per delivery one
  transaction inserting the delivery, then one transaction that selects it,
  inserts an attempt and updates its status (2 commits).
- floor: one insert+update transaction per row (the physical floor of one
  durable write).

It also counts commits and statements per delivery (machine-independent).

    PYTHONPATH=src python bench/bench_engine.py [--smoke] [--json]
"""

from __future__ import annotations

import json
import os
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, make_url, text

from chimeway_backends.memory import MemoryBackend
from chimeway_core import CallableChannel, Chimeway, Sent, SQLStore

ADMIN_URL = os.environ.get(
    "CHIMEWAY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
ANCHOR_DDL = (
    "CREATE TABLE anchor_deliveries (id VARCHAR(36) PRIMARY KEY, channel VARCHAR(200),"
    " recipient VARCHAR(1000), payload TEXT, status VARCHAR(20), attempt_count INTEGER,"
    " created_at VARCHAR(40), updated_at VARCHAR(40))",
    "CREATE TABLE anchor_attempts (delivery_id VARCHAR(36), number INTEGER,"
    " outcome VARCHAR(20), started_at VARCHAR(40), PRIMARY KEY (delivery_id, number))",
)


class Counter:
    """Counts commits and statements on an engine."""

    def __init__(self, engine: Engine) -> None:
        self.commits = 0
        self.statements = 0
        event.listen(engine, "commit", self._commit)
        event.listen(engine, "before_cursor_execute", self._statement)

    def _commit(self, *_: object) -> None:
        self.commits += 1

    def _statement(self, *_: object) -> None:
        self.statements += 1


def _chimeway(url: str, n: int) -> tuple[float, float, float]:
    store = SQLStore(url)
    store.drop_all()
    store.create_all()
    backend = MemoryBackend()
    engine = Chimeway(store, backend, {"sms": CallableChannel(lambda _delivery, _key: Sent())})
    counter = Counter(store.engine)
    started = time.perf_counter()
    for i in range(n):
        engine.notify("sms", f"+1555{i:07}", {"text": "hello"})
    backend.run_until_idle(engine, fail_fast=True)
    engine.flush_outbox()
    elapsed = time.perf_counter() - started
    assert {("succeeded", None): n} == {
        (status.value, reason): count for (status, reason), count in store.counts().items()
    }
    store.engine.dispose()
    return elapsed, counter.commits / n, counter.statements / n


def _anchor(url: str, n: int, *, floor: bool) -> float:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS anchor_attempts"))
        conn.execute(text("DROP TABLE IF EXISTS anchor_deliveries"))
        for ddl in ANCHOR_DDL:
            conn.execute(text(ddl))
    insert = text(
        "INSERT INTO anchor_deliveries VALUES (:id, 'sms', :r, '{\"text\": \"hello\"}',"
        " 'ready', 0, :now, :now)"
    )
    started = time.perf_counter()
    for i in range(n):
        now = datetime.now(UTC).isoformat()
        ident = str(uuid.uuid4())
        if floor:
            with engine.begin() as conn:
                conn.execute(insert, {"id": ident, "r": f"+1555{i:07}", "now": now})
                conn.execute(
                    text("UPDATE anchor_deliveries SET status='succeeded' WHERE id=:id"),
                    {"id": ident},
                )
            continue
        with engine.begin() as conn:
            conn.execute(insert, {"id": ident, "r": f"+1555{i:07}", "now": now})
        with engine.begin() as conn:
            row = conn.execute(
                text("SELECT id, status FROM anchor_deliveries WHERE id=:id"), {"id": ident}
            ).one()
            conn.execute(
                text("INSERT INTO anchor_attempts VALUES (:id, 1, 'succeeded', :now)"),
                {"id": row.id, "now": now},
            )
            conn.execute(
                text(
                    "UPDATE anchor_deliveries SET status='succeeded', attempt_count=1,"
                    " updated_at=:now WHERE id=:id"
                ),
                {"id": row.id, "now": now},
            )
    elapsed = time.perf_counter() - started
    engine.dispose()
    return elapsed


def bench(name: str, url: str, n: int, runs: int) -> dict[str, float]:
    """Median deliveries/s for chimeway, anchor A and the floor, interleaved per run."""
    chimeway, anchor, floor, commits, statements = [], [], [], [], []
    for _ in range(runs):
        elapsed, per_commit, per_statement = _chimeway(url, n)
        chimeway.append(n / elapsed)
        commits.append(per_commit)
        statements.append(per_statement)
        anchor.append(n / _anchor(url, n, floor=False))
        floor.append(n / _anchor(url, n, floor=True))
    result = {
        "chimeway_per_s": statistics.median(chimeway),
        "chimeway_spread": max(chimeway) - min(chimeway),
        "anchor_a_per_s": statistics.median(anchor),
        "anchor_a_spread": max(anchor) - min(anchor),
        "floor_per_s": statistics.median(floor),
        "commits_per_delivery": statistics.median(commits),
        "statements_per_delivery": statistics.median(statements),
    }
    result["ratio_to_anchor_a"] = result["chimeway_per_s"] / result["anchor_a_per_s"]
    result["ratio_to_floor"] = result["chimeway_per_s"] / result["floor_per_s"]
    print(
        f"{name:10} chimeway {result['chimeway_per_s']:8.0f}/s  anchor A "
        f"{result['anchor_a_per_s']:8.0f}/s  floor {result['floor_per_s']:8.0f}/s  "
        f"x anchor A {result['ratio_to_anchor_a']:.2f}  x floor {result['ratio_to_floor']:.2f}  "
        f"commits/delivery {result['commits_per_delivery']:.2f}  "
        f"statements/delivery {result['statements_per_delivery']:.1f}",
        file=sys.stderr,
    )
    return result


@contextmanager
def _postgres() -> Iterator[str | None]:
    name = f"chimeway_bench_{secrets.token_hex(4)}"
    try:
        admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as error:
        print(f"postgres unavailable, skipped: {type(error).__name__}", file=sys.stderr)
        yield None
        return
    try:
        yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    """Run on SQLite and PostgreSQL; print a line each, and JSON with --json."""
    smoke = "--smoke" in sys.argv
    n, runs = (50, 1) if smoke else (1000, 3)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        results["sqlite"] = bench("sqlite", f"sqlite:///{Path(folder) / 'bench.db'}", n, runs)
    with _postgres() as url:
        if url is not None:
            results["postgresql"] = bench("postgresql", url, n, runs)
    if "--json" in sys.argv:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
