"""The ledger in a namespace: every statement runs there, and two namespaces never meet.

Each database gets three stores on one database: the default schema and two
namespaces. The same workload (notify, with and without the caller's
session, perform, retry, relay, rescue, cancel, resend, prune, the gauges)
runs on each, and every statement a namespaced store sends names its tables
qualified. Reading any store shows only its own deliveries.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    Table,
    create_engine,
    event,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.orm import Session

from chimeway_backends.memory import MemoryBackend
from chimeway_core import RetryPolicy, VirtualClock
from chimeway_core.engine import Chimeway
from chimeway_core.ledger.namespace import check_namespace, sqlite_file
from chimeway_core.outcomes import TemporaryFailure
from chimeway_core.records import NewDelivery
from chimeway_core.states import LIVE_STATUSES, DeliveryStatus
from chimeway_core.store import SQLStore
from chimeway_core.testing import FakeChannel
from tests.services import truncate_tables

START = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
RETRY = RetryPolicy(max_attempts=3, initial_delay=10.0, backoff_factor=2.0, jitter=0.0)
# A chimeway table named without a schema or attached database in front
# (PostgreSQL's FOR UPDATE OF names a FROM item, never qualified).
UNQUALIFIED = re.compile(
    r"(?<![.\w\"])(?<!FOR UPDATE OF )\"?chimeway_"
    r"(?:deliveries|delivery_attempts|delivery_journal|outbox)\b"
)


# ------------------------------------------------------------------ the names


@pytest.mark.parametrize("name", ["billing", "app_2", "_x", "a" * 63])
def test_a_lowercase_identifier_is_a_namespace(name: str) -> None:
    assert name == check_namespace(name)


@pytest.mark.parametrize(
    "name",
    ["", "Billing", "2fa", "a-b", "a.b", "a b", 'a"b', "a" * 64, "é", "public", "pg_x", "main"],
)
def test_anything_else_is_refused_before_a_connection(name: str) -> None:
    with pytest.raises(ValueError, match="namespace"):
        SQLStore("sqlite://", namespace=name)


def test_a_namespace_is_a_str() -> None:
    with pytest.raises(TypeError, match="namespace must be a str"):
        SQLStore("sqlite://", namespace=7)  # type: ignore[arg-type]


def test_sqlite_attaches_a_file_beside_the_main_one() -> None:
    assert "/data/app.billing.db" == sqlite_file("/data/app.db", "billing")
    assert "/data/ledger.billing.db" == sqlite_file("/data/ledger", "billing")
    assert ":memory:" == sqlite_file(":memory:", "billing")
    assert ":memory:" == sqlite_file(None, "billing")


def test_repr_names_the_namespace() -> None:
    assert "SQLStore('sqlite://', namespace='billing')" == repr(
        SQLStore("sqlite://", namespace="billing")
    )


# ------------------------------------------------------------------ the stores


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Engine, list[str]]]:
    """One engine on a fresh database and two fresh namespace names."""
    names = [f"ns_{secrets.token_hex(4)}", f"ns_{secrets.token_hex(4)}"]
    if request.param == "sqlite":
        engine = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
        yield engine, names
        engine.dispose()
        return
    url: str = request.getfixturevalue("postgres_database")
    engine = create_engine(url)
    yield engine, names
    truncate_tables(engine)  # the default schema's tables are the session's
    with engine.begin() as conn:
        for name in names:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {name} CASCADE"))
    engine.dispose()


@pytest.fixture
def app_table(database: tuple[Engine, list[str]]) -> Iterator[Table]:
    """The application's own table, in the default schema."""
    engine, _ = database
    name = f"orders_{secrets.token_hex(3)}"
    table = Table(name, MetaData(), Column("id", Integer, primary_key=True))
    table.create(engine)
    yield table
    table.drop(engine)


def _statements(engine: Engine) -> list[str]:
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(args[2])

    event.listen(engine, "before_cursor_execute", record)
    return seen


def _workload(store: SQLStore, app: Engine, orders: Table, tag: str) -> dict[str, Any]:
    """Every kind of ledger statement the engine runs; what it made, by kind."""
    clock = VirtualClock(START)
    backend = MemoryBackend(clock)
    flaky = FakeChannel(script=[TemporaryFailure("busy"), TemporaryFailure("busy")])
    engine = Chimeway(
        store,
        backend,
        {"sms": FakeChannel(), "flaky": flaky},
        retry=RETRY,
        clock=clock,
    )
    plain = engine.notify("sms", f"+1555{tag}0")
    many = engine.notify_many(
        [
            NewDelivery(channel="sms", recipient=f"+1555{tag}{n}", idempotency_key=f"{tag}{n}")
            for n in range(1, 4)
        ]
    )
    again = engine.notify("sms", f"+1555{tag}1", idempotency_key=f"{tag}1")
    retried = engine.notify("flaky", f"+1555{tag}9")
    # In the caller's transaction, on the application's connection: the
    # application's own statements before and after are not redirected.
    with Session(app) as session:
        session.execute(insert(orders).values(id=1))
        in_session = engine.notify("sms", f"+1555{tag}8", session=session)
        assert [1] == list(session.scalars(select(orders.c.id)))
        session.commit()
    with Session(app) as session:
        engine.notify("sms", f"+1555{tag}7", idempotency_key=f"{tag}rb", session=session)
        session.rollback()
    later = clock.now() + timedelta(hours=1)
    cancelled = engine.notify("sms", f"+1555{tag}6", scheduled_at=later)
    engine.cancel(cancelled.id)
    backend.run_until_idle(engine, fail_fast=True)
    resent = engine.resend(cancelled.id)
    backend.run_until_idle(engine, fail_fast=True)
    assert 0 == engine.relay(grace=0)
    engine.rescue()
    engine.explain(plain.id)
    clock.advance(30 * 86400)
    pruned = engine.prune(older_than=86400)
    return {
        "ids": {plain.id, retried.id, in_session.id, cancelled.id, resent.copy.id}
        | {delivery.id for delivery in many},
        "again": again.id == many[0].id,
        "pruned": pruned,
    }


def test_every_statement_runs_in_its_namespace(
    database: tuple[Engine, list[str]], app_table: Table
) -> None:
    """Three stores on one database: each sees its own rows, and names its tables qualified."""
    engine, (first, second) = database
    stores = {None: SQLStore(engine), first: SQLStore(engine, namespace=first)}
    stores[second] = SQLStore(engine, namespace=second)
    for store in stores.values():
        store.create_all()
    seen = _statements(engine)
    results: dict[str | None, dict[str, Any]] = {}
    for n, (name, store) in enumerate(stores.items()):
        start = len(seen)
        results[name] = _workload(store, engine, app_table, str(n))
        with engine.begin() as conn:
            conn.execute(app_table.delete())
        if name is not None:
            # Only the application's own table may go unqualified.
            stray = [
                statement
                for statement in seen[start:]
                if UNQUALIFIED.search(statement) and app_table.name not in statement
            ]
            assert [] == stray
    assert all(result["again"] for result in results.values())
    for name, store in stores.items():
        assert len(results[name]["ids"]) == results[name]["pruned"]
        found = {delivery.id for delivery in store.find(limit=100)}
        # Pruning ran a month later: everything terminal went; what the
        # others made was never here to begin with.
        others = set().union(*(r["ids"] for other, r in results.items() if other != name))
        assert not found & others
        assert 0 == store.outbox_size()
        assert {} == {key: n for key, n in store.counts().items() if key[0] in LIVE_STATUSES}
    tables = {name: set(inspect(engine).get_table_names(schema=name)) for name in (first, second)}
    assert tables[first] == tables[second]
    assert "chimeway_deliveries" in tables[first]


def test_deliveries_stay_in_their_namespace_until_pruned(
    database: tuple[Engine, list[str]],
) -> None:
    """Rows written in one namespace are found there, and nowhere else, before any prune."""
    engine, (first, second) = database
    one = SQLStore(engine, namespace=first)
    two = SQLStore(engine, namespace=second)
    default = SQLStore(engine)
    for store in (one, two, default):
        store.create_all()
    clock = VirtualClock(START)
    made: dict[str, set[Any]] = {}
    for store, tag in ((one, "1"), (two, "2"), (default, "0")):
        chimeway = Chimeway(store, MemoryBackend(clock), {"sms": FakeChannel()}, clock=clock)
        made[tag] = {chimeway.notify("sms", f"+1555{tag}{n}").id for n in range(5)}
    for store, tag in ((one, "1"), (two, "2"), (default, "0")):
        assert made[tag] == {delivery.id for delivery in store.find(limit=100)}
        assert 5 == store.outbox_size()
        gauges = store.gauges(now=START)
        assert 5 == gauges.outbox
        for other, ids in made.items():
            if other != tag:
                assert all(store.get(delivery_id) is None for delivery_id in ids)
    assert {DeliveryStatus.READY} == {key[0] for key in one.counts()}
