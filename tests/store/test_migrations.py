"""The shipped Alembic migration builds exactly the schema of ``chimeway_core.schema.metadata``."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from chimeway_core.errors import ChimewayError, NoDatabaseConfiguredError
from chimeway_core.ledger.schema import PAGED_INDEXES
from chimeway_core.migrations import (
    SCRIPT_LOCATION,
    VERSION_TABLE,
    SchemaState,
    SchemaStatus,
    UnrecordedSchemaError,
    status,
    upgrade,
)
from chimeway_core.records import NewDelivery
from chimeway_core.schema import metadata
from chimeway_core.store import SQLStore
from tests.services import fresh_postgres_database

#: The migrations need alembic (the ``migrations`` extra).
pytestmark = pytest.mark.extras

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def _diffs(url: str) -> list[object]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"version_table": VERSION_TABLE, "compare_type": True}
            )
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


@pytest.fixture
def empty_postgres() -> Iterator[str]:
    """A brand-new empty PostgreSQL database, dropped afterwards."""
    with fresh_postgres_database("chimeway_migrate") as url:
        yield url


def test_upgrade_on_empty_sqlite_matches_metadata(tmp_path: Path) -> None:
    """upgrade() on an empty SQLite file yields a schema with no diff against metadata."""
    url = f"sqlite:///{tmp_path / 'migrated.db'}"
    upgrade(url)
    assert [] == _diffs(url)


def test_upgrade_on_empty_postgres_matches_metadata(empty_postgres: str) -> None:
    """upgrade() on an empty PostgreSQL database yields a schema with no diff against metadata."""
    upgrade(empty_postgres)
    assert [] == _diffs(empty_postgres)


def test_upgrade_is_idempotent_and_records_its_revision(tmp_path: Path) -> None:
    """A second upgrade() does nothing and the revision sits in chimeway's own version table."""
    url = f"sqlite:///{tmp_path / 'twice.db'}"
    upgrade(url)
    upgrade(url)
    engine = create_engine(url)
    with engine.connect() as conn:
        assert [("0003",)] == conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).all()
    engine.dispose()


def test_upgrade_accepts_a_store_engine(tmp_path: Path) -> None:
    """upgrade() runs on an engine a SQLStore already configured (WAL, BEGIN hooks)."""
    store = SQLStore(f"sqlite:///{tmp_path / 'store.db'}")
    upgrade(store.engine)
    expected = {table.name for table in metadata.sorted_tables} | {VERSION_TABLE}
    assert expected == set(inspect(store.engine).get_table_names())
    store.engine.dispose()


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_tables_made_by_create_all_are_adopted_with_their_rows(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """upgrade() after create_all() records head, keeps every row and ignores the app's tables."""
    url = (
        f"sqlite:///{tmp_path / 'made.db'}"
        if database == "sqlite"
        else request.getfixturevalue("empty_postgres")
    )
    store = SQLStore(url)
    with store.engine.begin() as conn:
        conn.execute(text("CREATE TABLE app_orders (id INTEGER PRIMARY KEY)"))
    store.create_all()
    created = store.create(NewDelivery(channel="sms", recipient="+15550100"), now=NOW)

    upgrade(url)
    upgrade(url)

    with store.engine.connect() as conn:
        assert [("0003",)] == conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).all()
    assert created.delivery == store.get(created.delivery.id)
    assert all("app_orders" in repr(difference) for difference in _diffs(url))
    store.engine.dispose()


def test_unrecorded_tables_that_differ_are_refused_and_left_alone(tmp_path: Path) -> None:
    """Tables with no revision that are not head's schema: UnrecordedSchemaError, no revision."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    store = SQLStore(url)
    store.create_all()
    with store.engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_chimeway_deliveries_created_at"))

    with pytest.raises(UnrecordedSchemaError, match="differ from this version's schema in 1") as e:
        upgrade(url)

    assert "ix_chimeway_deliveries_created_at" in str(e.value)
    assert VERSION_TABLE not in inspect(store.engine).get_table_names()
    store.engine.dispose()


def _status_of(url: str) -> SchemaStatus:
    engine = create_engine(url)
    try:
        return status(engine)
    finally:
        engine.dispose()


def test_status_follows_a_database_from_empty_to_head_on_postgres(empty_postgres: str) -> None:
    """Empty: every migration pending; after upgrade(): current, nothing pending."""
    before = _status_of(empty_postgres)
    upgrade(empty_postgres)
    after = _status_of(empty_postgres)
    assert (SchemaState.BEHIND, None, ("0001", "0002", "0003"), False) == (
        before.state,
        before.revision,
        before.pending,
        before.usable,
    )
    assert SchemaStatus(state=SchemaState.CURRENT, revision="0003", head="0003") == after
    assert after.usable


def test_status_of_tables_with_no_revision_tells_adoptable_from_different(tmp_path: Path) -> None:
    """create_all()'s tables are usable as they are; the same minus an index are not."""
    store = SQLStore(f"sqlite:///{tmp_path / 'made.db'}")
    store.create_all()
    adoptable = status(store.engine)
    with store.engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_chimeway_deliveries_created_at"))
    different = status(store.engine)
    assert SchemaStatus(state=SchemaState.ADOPTABLE, revision=None, head="0003") == adoptable
    assert adoptable.usable
    assert (SchemaState.UNRECORDED, False, 1) == (
        different.state,
        different.usable,
        len(different.differences),
    )
    assert "ix_chimeway_deliveries_created_at" in different.differences[0]
    store.engine.dispose()


def test_status_of_a_revision_this_version_does_not_ship_is_unknown(tmp_path: Path) -> None:
    """A database a newer chimeway migrated is not usable, and status() names its revision."""
    url = f"sqlite:///{tmp_path / 'newer.db'}"
    upgrade(url)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '0003_from_the_future'"))
    engine.dispose()
    found = _status_of(url)
    assert (SchemaState.UNKNOWN, "0003_from_the_future", "0003", (), False) == (
        found.state,
        found.revision,
        found.head,
        found.pending,
        found.usable,
    )


@pytest.mark.parametrize("url_of", ["sqlite", "postgres"])
def test_0002_adds_the_trace_context_to_a_ledger_in_use_and_takes_it_away(
    tmp_path: Path, url_of: str, request: pytest.FixtureRequest
) -> None:
    """A 0001 ledger with a delivery: 0002 keeps it (no trace context); back to 0001 too."""
    url = (
        f"sqlite:///{tmp_path / 'in-use.db'}"
        if url_of == "sqlite"
        else request.getfixturevalue("empty_postgres")
    )
    upgrade(url, revision="0001")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO chimeway_deliveries (id, channel, recipient, payload, "
                "idempotency_key, status, attempt_count, max_attempts, scheduled_at, version, "
                "deferral_count, metadata, created_at, updated_at) VALUES ("
                "'00000000000000000000000000000001', 'sms', 'r', 'null', 'k', 'ready', 0, 3, "
                ":now, 1, 0, '{}', :now, :now)"
            ),
            {"now": NOW},
        )
    upgrade(url)
    store = SQLStore(url)
    [delivery] = store.due(now=NOW, limit=10)
    assert ("k", None) == (delivery.idempotency_key, delivery.trace_context)
    store.engine.dispose()
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.set_main_option("sqlalchemy.url", url)
    command.downgrade(config, "0001")
    assert "trace_context" not in {
        c["name"] for c in inspect(engine).get_columns("chimeway_deliveries")
    }
    with engine.connect() as conn:
        assert 1 == conn.execute(text("SELECT count(*) FROM chimeway_deliveries")).scalar()
    engine.dispose()


@pytest.mark.parametrize("url_of", ["sqlite", "postgres"])
def test_0003_shapes_the_indexes_for_keyset_pages_and_back(
    tmp_path: Path, url_of: str, request: pytest.FixtureRequest
) -> None:
    """0003 ends three indexes in (created_at, id) and adds one; its downgrade undoes it."""
    url = (
        f"sqlite:///{tmp_path / 'indexes.db'}"
        if url_of == "sqlite"
        else request.getfixturevalue("empty_postgres")
    )
    engine = create_engine(url)

    def indexes(table: str) -> dict[str, list[str | None]]:
        return {str(i["name"]): list(i["column_names"]) for i in inspect(engine).get_indexes(table)}

    upgrade(url, revision="0002")
    before = indexes("chimeway_deliveries")
    assert ["created_at"] == before["ix_chimeway_deliveries_created_at"]
    assert ["status", "reason"] == before["ix_chimeway_deliveries_status_reason"]
    assert ["channel", "recipient"] == before["ix_chimeway_deliveries_channel_recipient"]
    upgrade(url)
    after = indexes("chimeway_deliveries")
    assert len(before) + 1 == len(after)
    for name, columns in PAGED_INDEXES.items():
        assert list(columns) == after[name]
    assert ["started_at"] == indexes("chimeway_delivery_attempts")[
        "ix_chimeway_delivery_attempts_started_at"
    ]
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.set_main_option("sqlalchemy.url", url)
    command.downgrade(config, "0002")
    assert before == indexes("chimeway_deliveries")
    assert "ix_chimeway_delivery_attempts_started_at" not in indexes("chimeway_delivery_attempts")
    engine.dispose()


@pytest.mark.parametrize("from_file", [False, True])
def test_the_environment_with_no_database_raises_no_database_configured(
    tmp_path: Path, from_file: bool
) -> None:
    """Alembic run on chimeway's scripts with no URL and no connection: nothing runs."""
    if from_file:
        ini = tmp_path / "alembic.ini"
        ini.write_text(f"[alembic]\nscript_location = {SCRIPT_LOCATION}\n")
        config = Config(str(ini))
    else:
        config = Config()
        config.set_main_option("script_location", SCRIPT_LOCATION)
    with pytest.raises(NoDatabaseConfiguredError) as raised:
        command.upgrade(config, "head")
    assert isinstance(raised.value, ChimewayError)
    assert isinstance(raised.value, RuntimeError)
    expected = str(tmp_path / "alembic.ini") if from_file else None
    assert expected == raised.value.config_file
    assert "set sqlalchemy.url" in str(raised.value)
