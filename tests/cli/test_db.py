"""``chimeway db upgrade``: the shipped migrations, on PostgreSQL and SQLite."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from chimeway_core.schema import metadata
from chimeway_core.store import SQLStore
from tests.cli.conftest import Invoke, run

TABLES = sorted(table.name for table in metadata.sorted_tables)


def _tables(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        return sorted(
            name for name in inspect(engine).get_table_names() if name != "chimeway_alembic_version"
        )
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_upgrade_creates_the_tables_on_an_empty_postgres_database(
    fresh_postgres: str, tmp_path: Path
) -> None:
    """db upgrade on an empty PostgreSQL database creates chimeway's tables at head."""
    assert [] == _tables(fresh_postgres)
    result = run("db", "upgrade", "--db", fresh_postgres, "--json", cwd=tmp_path)
    assert (0, "") == (result.code, result.stderr)
    assert TABLES == _tables(fresh_postgres)
    report = json.loads(result.stdout)
    assert ("0003", sorted([*TABLES, "chimeway_alembic_version"])) == (
        report["revision"],
        report["tables"],
    )


@pytest.mark.extras
def test_upgrade_is_idempotent_and_reads_the_environment(tmp_path: Path, invoke: Invoke) -> None:
    """Upgrading twice is harmless; CHIMEWAY_DATABASE_URL names the database."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    first = invoke("db", "upgrade", env={"CHIMEWAY_DATABASE_URL": url})
    second = invoke("db", "upgrade")
    assert (0, 0) == (first.code, second.code)
    assert first.stdout == second.stdout
    assert second.stdout.startswith(f"{url} is at chimeway revision 0003; tables: ")
    assert TABLES == _tables(url)
    assert 0 == invoke("inspect", "--db", url).code


@pytest.mark.extras
def test_a_failed_upgrade_leaves_the_database_as_it_was(tmp_path: Path, invoke: Invoke) -> None:
    """A migration that fails on SQLite rolls back whole: no table, no version row is left."""
    path = tmp_path / "ledger.sqlite3"
    url = f"sqlite:///{path}"
    # An index of the application's that takes a name the migration gives to one of its own:
    # the migration fails after it has created tables.
    _execute(path, "CREATE TABLE app_orders (x INTEGER)")
    _execute(path, "CREATE INDEX ix_chimeway_outbox_created_at ON app_orders (x)")
    failed = invoke("db", "upgrade", "--db", url)
    assert 1 == failed.code, failed.stderr
    assert "index ix_chimeway_outbox_created_at already exists" in failed.stderr
    assert ["app_orders"] == _all_tables(url)
    _execute(path, "DROP INDEX ix_chimeway_outbox_created_at")
    again = invoke("db", "upgrade", "--db", url)
    assert (0, "") == (again.code, again.stderr)
    assert ["app_orders", *TABLES] == _tables(url)


@pytest.mark.extras
def test_tables_made_by_create_all_are_brought_under_migrations(
    tmp_path: Path, invoke: Invoke
) -> None:
    """The quickstart's order, create_all() then db upgrade, records head; changed tables exit 1."""
    made = f"sqlite:///{tmp_path / 'made.sqlite3'}"
    SQLStore(made).create_all()
    adopted = invoke("db", "upgrade", "--db", made)
    assert (0, "") == (adopted.code, adopted.stderr)
    assert adopted.stdout.startswith(f"{made} is at chimeway revision 0003; tables: ")

    changed = tmp_path / "changed.sqlite3"
    SQLStore(f"sqlite:///{changed}").create_all()
    _execute(changed, "ALTER TABLE chimeway_outbox ADD COLUMN extra INTEGER")
    refused = invoke("db", "upgrade", "--db", f"sqlite:///{changed}")
    assert (1, "") == (refused.code, refused.stdout)
    assert 1 == len(refused.stderr_lines)
    assert "exist with no revision recorded in chimeway_alembic_version" in refused.stderr
    assert "chimeway_alembic_version" not in _all_tables(f"sqlite:///{changed}")


def test_a_refused_revision_touches_no_database(tmp_path: Path, invoke: Invoke) -> None:
    """--revision is checked before connecting: no SQLite file is created for a bad one."""
    path = tmp_path / "ledger.sqlite3"
    result = invoke("db", "upgrade", "--db", f"sqlite:///{path}", "--revision", "head-1")
    assert 2 == result.code
    assert not path.exists()


@pytest.mark.extras
def test_check_gates_a_deploy_on_the_schema(tmp_path: Path, invoke: Invoke) -> None:
    """db check: exit 1 with the migration to apply, 0 once upgraded, 1 for a newer revision."""
    path = tmp_path / "ledger.sqlite3"
    url = f"sqlite:///{path}"
    _execute(path, "CREATE TABLE app_orders (x INTEGER)")
    behind = invoke("db", "check", "--db", url)
    assert (1, "") == (behind.code, behind.stderr)
    assert behind.stdout == (
        f"{url}: no chimeway tables; head is 0003: 3 migrations to apply (0001, 0002, 0003): "
        "run chimeway db upgrade\n"
    )
    assert 0 == invoke("db", "upgrade", "--db", url).code
    current = invoke("db", "check", "--db", url, "--json")
    assert (0, "") == (current.code, current.stderr)
    assert {
        "database": url,
        "state": "current",
        "usable": True,
        "revision": "0003",
        "head": "0003",
        "pending": [],
        "differences": [],
    } == json.loads(current.stdout)
    _execute(path, "UPDATE chimeway_alembic_version SET version_num = '0009'")
    newer = invoke("db", "check", "--db", url)
    assert newer.code == 1
    assert "at chimeway revision 0009, which this version (head 0003) does not ship" in newer.stdout


@pytest.mark.extras
def test_check_reads_only(tmp_path: Path, invoke: Invoke) -> None:
    """db check records no revision for create_all()'s tables and creates no SQLite file."""
    made = f"sqlite:///{tmp_path / 'made.sqlite3'}"
    SQLStore(made).create_all()
    adoptable = invoke("db", "check", "--db", made)
    assert (0, "") == (adoptable.code, adoptable.stderr)
    assert "no revision recorded: usable (chimeway db upgrade records it)" in adoptable.stdout
    assert "chimeway_alembic_version" not in _all_tables(made)
    missing = tmp_path / "missing.sqlite3"
    assert 2 == invoke("db", "check", "--db", f"sqlite:///{missing}").code
    assert not missing.exists()


def _execute(path: Path, statement: str) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(statement)


def _all_tables(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        return sorted(inspect(engine).get_table_names())
    finally:
        engine.dispose()
