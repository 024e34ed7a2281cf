"""chimeway's migrations in a namespace: their own tables and history, beside the default's."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from chimeway_core.migrations import VERSION_TABLE, SchemaState, status, upgrade
from chimeway_core.records import NewDelivery
from chimeway_core.schema import metadata
from chimeway_core.store import SQLStore
from tests.services import fresh_postgres_database

#: The migrations need alembic (the ``migrations`` extra).
pytestmark = pytest.mark.extras

NOW = datetime(2030, 1, 1, tzinfo=UTC)
TABLES = {*metadata.tables, VERSION_TABLE}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'app.db'}"
        return
    with fresh_postgres_database("chimeway_migrate_ns") as fresh:
        yield fresh


def _tables(url: str, schema: str | None) -> set[str]:
    engine = create_engine(url)
    try:
        if schema is not None and engine.dialect.name == "sqlite":
            # An attached database is seen through a store's engine only.
            engine = SQLStore(engine, namespace=schema).engine
        return set(inspect(engine).get_table_names(schema=schema))
    finally:
        engine.dispose()


def test_upgrade_in_a_namespace_makes_its_tables_and_history_there(url: str) -> None:
    upgrade(url, namespace="billing")
    assert TABLES <= _tables(url, "billing")
    assert not _tables(url, None) & TABLES
    assert SchemaState.CURRENT == status(url, namespace="billing").state
    assert SchemaState.BEHIND == status(url).state
    assert SchemaState.BEHIND == status(url, namespace="shipping").state
    # Again: nothing to do.
    upgrade(url, namespace="billing")
    assert SchemaState.CURRENT == status(url, namespace="billing").state


def test_namespaces_migrate_independently_and_stores_use_them(url: str) -> None:
    upgrade(url, namespace="billing")
    upgrade(url)
    upgrade(url, namespace="shipping")
    made = {}
    for namespace in ("billing", None, "shipping"):
        store = SQLStore(url, namespace=namespace)
        spec = NewDelivery(channel="sms", recipient=f"+1{namespace}", idempotency_key="same")
        made[namespace] = store.create(spec, now=NOW).delivery.id
        store.engine.dispose()
    assert 3 == len(set(made.values()))
    for namespace, delivery_id in made.items():
        store = SQLStore(url, namespace=namespace)
        assert [delivery_id] == [delivery.id for delivery in store.find()]
        store.engine.dispose()


def test_tables_made_by_create_all_in_a_namespace_are_adopted(url: str) -> None:
    store = SQLStore(url, namespace="billing")
    store.create_all()
    spec = NewDelivery(channel="sms", recipient="+1", idempotency_key="kept")
    kept = store.create(spec, now=NOW).delivery.id
    assert SchemaState.ADOPTABLE == status(url, namespace="billing").state
    upgrade(url, namespace="billing")
    assert SchemaState.CURRENT == status(url, namespace="billing").state
    assert [kept] == [delivery.id for delivery in store.find()]
    store.engine.dispose()


def test_a_bad_namespace_is_refused_before_the_database_is_touched(tmp_path: Path) -> None:
    path = tmp_path / "untouched.db"
    with pytest.raises(ValueError, match="namespace"):
        upgrade(f"sqlite:///{path}", namespace="Billing")
    with pytest.raises(ValueError, match="namespace"):
        status(f"sqlite:///{path}", namespace="pg_catalog")
    assert not path.exists()
