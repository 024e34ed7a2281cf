"""notify -> terminal on the memory backend, next to hand-written anchors, on SQLite and PostgreSQL.

For a SQLite file (WAL) and a throwaway PostgreSQL database, interleaved runs of:

- chimeway: ``notify()`` each delivery, then the memory backend runs every
  job through ``perform()`` against a channel that always sends, and the
  engine clears its outbox rows;
- anchor A: what a careful user writes without chimeway: per delivery one
  transaction inserting the delivery, then one transaction that selects it,
  inserts an attempt and updates its status (2 commits);
- floor: one insert+update transaction per row (one durable write per delivery).

On SQLite, chimeway and anchor A also run with ``PRAGMA synchronous=OFF`` on
both sides: a diagnostic, never a setting to use (a commit then returns
before the disk has it). It tells the time a delivery spends waiting for its
commits' fsyncs apart from everything else it does, which is what the SQLite
target's remedy weighs.

Then the machine-independent counts, per successful delivery and per
delivery retried once (a temporary failure, then a success, no backoff):
commits (all, and those that wrote) and statements, from SQLAlchemy's
engine events, and the write-ahead log the database wrote for them (rows,
index entries and commit records together). And what the machine charges
for the two things the counts count: a round trip (``SELECT 1``) and a
durable one-row write (an insert and its commit), so that the ratios can be
read against the counts.

    python bench/bench_engine.py [--smoke]     # this area alone, JSON on stdout
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from sqlalchemy import Engine, create_engine, event, text

from _harness import (
    Config,
    Results,
    SQLCounter,
    Stat,
    Target,
    WALMeter,
    compare_each,
    expect,
    interleave,
    log,
    per_second,
    postgres_database,
    reachable,
    run_area,
)
from chimeway_backends.memory import MemoryBackend
from chimeway_core import (
    CallableChannel,
    Chimeway,
    Delivery,
    RetryPolicy,
    Sent,
    SQLStore,
    TemporaryFailure,
)
from chimeway_core.engine.handover import OUTBOX_FLUSH_AT as OUTBOX_BATCH
from chimeway_core.metrics import OpenTelemetryMetrics
from chimeway_core.telemetry import OpenTelemetrySubscriber, Telemetry

AREA = "engine"
ANCHOR_DDL = (
    "CREATE TABLE anchor_deliveries (id VARCHAR(36) PRIMARY KEY, channel VARCHAR(200),"
    " recipient VARCHAR(1000), payload TEXT, status VARCHAR(20), attempt_count INTEGER,"
    " created_at VARCHAR(40), updated_at VARCHAR(40))",
    "CREATE TABLE anchor_attempts (delivery_id VARCHAR(36), number INTEGER,"
    " outcome VARCHAR(20), started_at VARCHAR(40), PRIMARY KEY (delivery_id, number))",
)
INSERT = text(
    "INSERT INTO anchor_deliveries VALUES (:id, 'sms', :r, '{\"text\": \"hello\"}',"
    " 'ready', 0, :now, :now)"
)
SELECT = text("SELECT id, status FROM anchor_deliveries WHERE id=:id")
INSERT_ATTEMPT = text("INSERT INTO anchor_attempts VALUES (:id, 1, 'succeeded', :now)")
UPDATE = text(
    "UPDATE anchor_deliveries SET status='succeeded', attempt_count=1, updated_at=:now WHERE id=:id"
)
FLOOR_UPDATE = text("UPDATE anchor_deliveries SET status='succeeded' WHERE id=:id")


def _always_sent(_delivery: Delivery, _key: str) -> Sent:
    return Sent()


def _fail_once(delivery: Delivery, _key: str) -> Sent | TemporaryFailure:
    # attempt_count is the number of the attempt being made.
    return TemporaryFailure("try again") if delivery.attempt_count == 1 else Sent()


def make_engine(
    url: str | Engine,
    send: Callable[[Delivery, str], Any] = _always_sent,
    telemetry: Telemetry | None = None,
) -> Chimeway:
    """A fresh ledger on ``url`` (tables dropped and created) with the memory backend."""
    store = SQLStore(url)
    store.drop_all()
    store.create_all()
    return Chimeway(
        store,
        MemoryBackend(),
        {"sms": CallableChannel(send)},
        retry=RetryPolicy.immediate(max_attempts=3),
        telemetry=telemetry,
    )


class _Discard(SpanExporter):
    """An exporter that drops what it is given: the cost measured is chimeway's and the SDK's."""

    def export(self, spans: Any) -> SpanExportResult:
        del spans
        return SpanExportResult.SUCCESS


def observed() -> tuple[Telemetry, Callable[[], None]]:
    """Telemetry with traces (SDK, batch processor) and metrics (SDK), and its shutdown.

    What an application that has both set up pays: spans go through the
    SDK's BatchSpanProcessor to an exporter that drops them; measurements
    are aggregated by the SDK's meter provider.
    """
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(_Discard()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    telemetry = Telemetry()
    telemetry.subscribe(OpenTelemetrySubscriber(tracer_provider=tracer_provider))
    telemetry.subscribe(OpenTelemetryMetrics(meter_provider=meter_provider))

    def shutdown() -> None:
        tracer_provider.shutdown()
        meter_provider.shutdown()

    return telemetry, shutdown


def notify_to_terminal(engine: Chimeway, n: int, offset: int = 0) -> None:
    """``notify()`` n deliveries one by one, then run every job until none is left."""
    backend = engine.backend
    assert isinstance(backend, MemoryBackend)
    for i in range(offset, offset + n):
        engine.notify("sms", f"+1555{i:07}", {"text": "hello"})
    backend.run_until_idle(engine, fail_fast=True)
    engine.flush_outbox()


def _check_all_succeeded(engine: Chimeway, n: int) -> None:
    counts = {(s.value, reason): c for (s, reason), c in engine.store.counts().items()}
    expect("chimeway memory run: deliveries by status", {("succeeded", None): n}, counts)


def _no_fsync(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=OFF")
    cursor.close()


def sql_engine(url: str, *, fsync: bool = True) -> Engine:
    """An engine on ``url``; with ``fsync=False`` (SQLite, a diagnostic) commits skip the fsync."""
    engine = create_engine(url)
    if not fsync:
        event.listen(engine, "connect", _no_fsync)
    return engine


def _chimeway(url: str, n: int, *, fsync: bool = True, observe: bool = False) -> float:
    telemetry, shutdown = observed() if observe else (None, lambda: None)
    engine = make_engine(sql_engine(url, fsync=fsync), telemetry=telemetry)
    rate = per_second(n, lambda: notify_to_terminal(engine, n))
    _check_all_succeeded(engine, n)
    engine.store.engine.dispose()
    shutdown()
    return rate


def anchor_tables(engine: Engine) -> None:
    """(Re)create anchor A's two tables."""
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS anchor_attempts"))
        conn.execute(text("DROP TABLE IF EXISTS anchor_deliveries"))
        for ddl in ANCHOR_DDL:
            conn.execute(text(ddl))


def insert_anchor_rows(engine: Engine, ids: list[str]) -> None:
    """Anchor A's delivery rows for ``ids``, in one transaction (set-up, not timed)."""
    now = datetime.now(UTC).isoformat()
    with engine.begin() as conn:
        conn.execute(
            INSERT, [{"id": i, "r": f"+1555{n:07}", "now": now} for n, i in enumerate(ids)]
        )


def count_anchor_done(engine: Engine) -> int:
    """How many anchor deliveries reached ``succeeded``."""
    with engine.begin() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM anchor_deliveries WHERE status='succeeded'")
            ).scalar_one()
        )


def anchor_a_insert(engine: Engine, ident: str, recipient: str) -> None:
    """Anchor A's first transaction: insert the delivery."""
    now = datetime.now(UTC).isoformat()
    with engine.begin() as conn:
        conn.execute(INSERT, {"id": ident, "r": recipient, "now": now})


def anchor_a_work(engine: Engine, ident: str) -> None:
    """Anchor A's worker transaction: select the delivery, insert an attempt, update it."""
    now = datetime.now(UTC).isoformat()
    with engine.begin() as conn:
        row = conn.execute(SELECT, {"id": ident}).one()
        conn.execute(INSERT_ATTEMPT, {"id": row.id, "now": now})
        conn.execute(UPDATE, {"id": row.id, "now": now})


def _anchor(url: str, n: int, *, floor: bool, fsync: bool = True) -> float:
    engine = sql_engine(url, fsync=fsync)
    anchor_tables(engine)

    def work() -> None:
        for i in range(n):
            ident = str(uuid.uuid4())
            if floor:
                now = datetime.now(UTC).isoformat()
                with engine.begin() as conn:
                    conn.execute(INSERT, {"id": ident, "r": f"+1555{i:07}", "now": now})
                    conn.execute(FLOOR_UPDATE, {"id": ident})
                continue
            anchor_a_insert(engine, ident, f"+1555{i:07}")
            anchor_a_work(engine, ident)

    rate = per_second(n, work)
    expect("anchor-A in-process run: rows marked done", n, count_anchor_done(engine))
    engine.dispose()
    return rate


def _counts(url: str, n: int) -> dict[str, dict[str, float]]:
    """Per-delivery commits and statements: chimeway succeeded, retried once, anchor A."""
    out: dict[str, dict[str, float]] = {}
    for name, send in (("succeeded", _always_sent), ("retried once", _fail_once)):
        engine = make_engine(url, send)
        notify_to_terminal(engine, n)  # warm: the first rows of a table allocate pages
        wal = WALMeter(engine.store.engine)
        counter = SQLCounter(engine.store.engine)
        notify_to_terminal(engine, n, offset=n)
        commits, writes, statements = counter.snapshot()
        counter.close()
        written = wal.written()
        wal.close()
        _check_all_succeeded(engine, 2 * n)
        out[f"chimeway, {name}"] = {
            "commits": commits / n,
            "write_commits": writes / n,
            "statements": statements / n,
            "wal_kib": written / n / 1024,
        }
        engine.store.engine.dispose()
    sql = create_engine(url)
    anchor_tables(sql)
    for i in range(n):
        ident = str(uuid.uuid4())
        anchor_a_insert(sql, ident, f"+1555{i:07}")
        anchor_a_work(sql, ident)
    wal = WALMeter(sql)
    counter = SQLCounter(sql)
    for i in range(n, 2 * n):
        ident = str(uuid.uuid4())
        anchor_a_insert(sql, ident, f"+1555{i:07}")
        anchor_a_work(sql, ident)
    commits, writes, statements = counter.snapshot()
    counter.close()
    written = wal.written()
    wal.close()
    out["anchor A"] = {
        "commits": commits / n,
        "write_commits": writes / n,
        "statements": statements / n,
        "wal_kib": written / n / 1024,
    }
    sql.dispose()
    return out


def _round_trips_us(engine: Engine, n: int) -> float:
    """Microseconds per ``SELECT 1`` on one connection."""
    with engine.connect() as conn:
        started = time.perf_counter()
        for _ in range(n):
            conn.exec_driver_sql("SELECT 1")
        return (time.perf_counter() - started) / n * 1e6


def _durable_writes_us(engine: Engine, n: int, *, commit: bool) -> float:
    """Microseconds per one-row insert into ``bench_durable_writes``, committed."""
    insert = text("INSERT INTO bench_durable_writes VALUES (:n)")
    with engine.connect() as conn:
        started = time.perf_counter()
        for i in range(n):
            conn.execute(insert, {"n": i})
            if commit:  # in autocommit the statement has committed already
                conn.commit()
        return (time.perf_counter() - started) / n * 1e6


def machine_costs(url: str, n: int, runs: int) -> dict[str, Any]:
    """A round trip and a durable one-row write on ``url``, in µs, over interleaved runs.

    On PostgreSQL both run in autocommit, so the write is one round trip plus
    its WAL flush; on SQLite (in process) the "round trip" is a call into the
    library and the write is a transaction with its fsync.
    """
    postgres = url.startswith("postgresql")
    engine = create_engine(url, isolation_level="AUTOCOMMIT") if postgres else create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS bench_durable_writes"))
        conn.execute(text("CREATE TABLE bench_durable_writes (n INTEGER)"))
    samples = interleave(
        {
            "round trip": lambda: _round_trips_us(engine, n),
            "durable write": lambda: _durable_writes_us(engine, n, commit=not postgres),
        },
        runs,
    )
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE bench_durable_writes"))
    engine.dispose()
    return {name: Stat(values, "µs").to_json() for name, values in samples.items()}


def bench_database(config: Config, results: Results, name: str, url: str) -> None:
    """Interleaved chimeway / anchor A / floor runs on one database, then the counts."""
    n = config.size(1000, 20)
    cases = {
        "chimeway": lambda: _chimeway(url, n),
        "anchor A": lambda: _anchor(url, n, floor=False),
        "floor": lambda: _anchor(url, n, floor=True),
        "chimeway, traced and metered": lambda: _chimeway(url, n, observe=True),
    }
    if name == "SQLite":
        cases["chimeway, no fsync"] = lambda: _chimeway(url, n, fsync=False)
        cases["anchor A, no fsync"] = lambda: _anchor(url, n, floor=False, fsync=False)
    samples = interleave(cases, config.runs)
    label = f"notify -> terminal, memory backend, {name}"
    detail = f"N={n} deliveries per run, notify() one by one, channel always sends"
    anchors = [
        ("anchor A", Target(">=", 0.6, f"notify->terminal >= 0.6x anchor A on {name}")),
        ("floor", None),
    ]
    compare_each(
        results, AREA, label, samples, anchors, unit="deliveries/s", detail=detail, name=name
    )
    if name == "SQLite":
        entry = results.compare(
            AREA,
            f"{label}, synchronous=OFF (diagnostic)",
            ("chimeway, no fsync", samples["chimeway, no fsync"]),
            ("anchor A, no fsync", samples["anchor A, no fsync"]),
            unit="deliveries/s",
            detail=f"{detail}; both sides with PRAGMA synchronous=OFF, so no commit waits "
            "for its fsync (a diagnostic, not durable): what a delivery costs besides its "
            "fsyncs",
        )
        log(AREA, f"SQLite without fsync: x{entry['ratio']['median']:.2f}")
    entry = results.compare(
        AREA,
        f"{label}, OpenTelemetry traces and metrics on / off",
        ("chimeway, traced and metered", samples["chimeway, traced and metered"]),
        ("chimeway", samples["chimeway"]),
        unit="deliveries/s",
        target=Target(">=", 0.91, f"traces and metrics cost <= 10% of notify->terminal on {name}"),
        detail=f"{detail}; on: OpenTelemetrySubscriber (SDK, BatchSpanProcessor, spans "
        "dropped) and OpenTelemetryMetrics (SDK meter provider, default exemplar filter) "
        "subscribed, as docs/telemetry.md sets them up; off: none",
    )
    log(AREA, f"{name} traced and metered: x{entry['ratio']['median']:.2f}")
    costs = machine_costs(url, config.size(1000, 20), config.runs)
    results.machine[name] = costs
    log(
        AREA,
        f"{name}: round trip {costs['round trip']['median']:.0f} µs, durable one-row write "
        f"{costs['durable write']['median']:.0f} µs",
    )
    counts = _counts(url, config.size(200, 10))
    results.counts[f"database, memory backend, {name}"] = counts
    log(AREA, f"{name} counts: {counts}")
    if name == "PostgreSQL":
        commits = counts["chimeway, succeeded"]["commits"]
        # The budget: notify, claim, record, "with outbox relay batched":
        # the clean-up of handed-over outbox rows is one commit per batch.
        budget = 3 + 1 / OUTBOX_BATCH
        results.extra_targets.append(
            {
                "target": "at most 3 commits per delivery end to end",
                "comparison": "commits per successful delivery, PostgreSQL "
                f"({counts['chimeway, succeeded']['write_commits']:.3f} of them writes; "
                f"outbox clean-up batched by {OUTBOX_BATCH})",
                "ratio": commits,
                "goal": f"<= 3 + 1/{OUTBOX_BATCH}",
                "met": commits <= budget + 1e-9,
            }
        )


def run(config: Config, results: Results) -> None:
    """SQLite then PostgreSQL (skipped, with a note, if unreachable)."""
    bench_database(config, results, "SQLite", f"sqlite:///{config.workdir / 'engine.db'}")
    if not reachable(config.postgres_admin_url, 5432):
        results.note(AREA, "PostgreSQL unreachable: skipped")
        return
    with postgres_database(config.postgres_admin_url) as url:
        bench_database(config, results, "PostgreSQL", url)


if __name__ == "__main__":
    run_area(run)
