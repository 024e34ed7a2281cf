"""``chimeway db upgrade``: the shipped migrations, on PostgreSQL and SQLite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from chimeway_core.schema import metadata
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
    assert ("0001", sorted([*TABLES, "chimeway_alembic_version"])) == (
        report["revision"],
        report["tables"],
    )


def test_upgrade_is_idempotent_and_reads_the_environment(tmp_path: Path, invoke: Invoke) -> None:
    """Upgrading twice is harmless; CHIMEWAY_DATABASE_URL names the database."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    first = invoke("db", "upgrade", env={"CHIMEWAY_DATABASE_URL": url})
    second = invoke("db", "upgrade")
    assert (0, 0) == (first.code, second.code)
    assert first.stdout == second.stdout
    assert second.stdout.startswith(f"{url} is at chimeway revision 0001; tables: ")
    assert TABLES == _tables(url)
    assert 0 == invoke("inspect", "--db", url).code
