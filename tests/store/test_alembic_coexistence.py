"""chimeway's tables inside an application's own Alembic environment, both routes.

An application with its own models and its own ``alembic`` directory, made
by ``alembic init`` in a temporary folder, its ``env.py`` using the hooks of
:mod:`chimeway_core.migrations.autogenerate` as docs/operations.md shows.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, inspect

from chimeway_core.migrations import upgrade
from chimeway_core.migrations.autogenerate import CHIMEWAY_TABLES, excluding_chimeway
from chimeway_core.schema import metadata as chimeway_metadata
from tests.services import fresh_postgres_database

#: The app's environment needs alembic (the ``migrations`` extra).
pytestmark = pytest.mark.extras

MODELS = """
import sqlalchemy as sa

metadata = sa.MetaData()
orders = sa.Table(
    "orders",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("placed_at", sa.DateTime(timezone=True)),
)
"""

#: env.py for the route where chimeway migrates its own tables (`chimeway db upgrade`).
OWN_TABLES_ENV = """
from alembic import context
from sqlalchemy import create_engine

from chimeway_core.migrations.autogenerate import include_name, include_object
from app_models import metadata

config = context.config
engine = create_engine(config.get_main_option("sqlalchemy.url"))
try:
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            include_name=include_name,
            include_object=include_object,
        )
        with context.begin_transaction():
            context.run_migrations()
finally:
    engine.dispose()
"""

#: env.py for the route where the app's migrations hold chimeway's tables.
FOLDED_ENV = """
from alembic import context
from sqlalchemy import create_engine

from chimeway_core.migrations.autogenerate import render_item
from chimeway_core.schema import metadata as chimeway_metadata
from app_models import metadata

config = context.config
engine = create_engine(config.get_main_option("sqlalchemy.url"))
try:
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=[metadata, chimeway_metadata],
            render_item=render_item,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
finally:
    engine.dispose()
"""


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'app.db'}"
        return
    with fresh_postgres_database("chimeway_coexist") as url:
        request.applymarker(pytest.mark.postgres)
        yield url


def _app(tmp_path: Path, url: str, env: str, monkeypatch: pytest.MonkeyPatch) -> Config:
    """An application's alembic directory with ``env`` as its env.py."""
    (tmp_path / "app_models.py").write_text(MODELS, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("app_models", None)
    importlib.invalidate_caches()
    ini = str(tmp_path / "alembic.ini")
    command.init(Config(ini), str(tmp_path / "migrations"))
    (tmp_path / "migrations" / "env.py").write_text(env, encoding="utf-8")
    config = Config(ini)
    config.set_main_option("script_location", str(tmp_path / "migrations"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _revision_text(tmp_path: Path, message: str) -> str:
    [script] = [
        path
        for path in (tmp_path / "migrations" / "versions").glob("*.py")
        if message in path.read_text(encoding="utf-8")
    ]
    return script.read_text(encoding="utf-8")


def test_autogenerate_leaves_chimeways_own_tables_alone(
    tmp_path: Path, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """chimeway migrates its tables; the app's autogenerate proposes nothing about them.

    The app's first revision creates only its own table; after applying it,
    a second autogenerate against a database holding both is empty.
    """
    upgrade(database)
    config = _app(tmp_path, database, OWN_TABLES_ENV, monkeypatch)
    command.revision(config, message="orders", autogenerate=True)
    first = _revision_text(tmp_path, "orders")
    assert "create_table('orders'" in first
    assert [] == [table for table in CHIMEWAY_TABLES if table in first]
    command.upgrade(config, "head")
    command.revision(config, message="nothing", autogenerate=True)
    second = _revision_text(tmp_path, "nothing")
    assert "op." not in second.split("def upgrade", 1)[1]
    engine = create_engine(database)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {*chimeway_metadata.tables, "orders", "alembic_version"} <= tables


def test_without_the_hooks_autogenerate_would_drop_chimeways_tables(
    tmp_path: Path, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the hooks prevent: the plain env.py proposes dropping every chimeway table."""
    upgrade(database)
    plain = OWN_TABLES_ENV.replace(
        "include_name=include_name,\n            include_object=include_object,\n", ""
    )
    assert plain != OWN_TABLES_ENV
    config = _app(tmp_path, database, plain, monkeypatch)
    command.revision(config, message="dangerous", autogenerate=True)
    script = _revision_text(tmp_path, "dangerous")
    assert "drop_table('chimeway_deliveries')" in script
    assert "drop_table('chimeway_alembic_version')" in script


def test_the_folded_route_writes_a_migration_that_upgrades_and_downgrades(
    tmp_path: Path, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """chimeway's metadata in the app's target_metadata: the migration runs both ways."""
    config = _app(tmp_path, database, FOLDED_ENV, monkeypatch)
    command.revision(config, message="with chimeway", autogenerate=True)
    script = _revision_text(tmp_path, "with chimeway")
    assert "chimeway_core" not in script  # runs without importing chimeway
    assert "sa.DateTime(timezone=True)" in script
    command.upgrade(config, "head")
    engine = create_engine(database)
    try:
        assert {*chimeway_metadata.tables, "orders"} <= set(inspect(engine).get_table_names())
        command.revision(config, message="after", autogenerate=True)
        assert "op." not in _revision_text(tmp_path, "after").split("def upgrade", 1)[1]
        command.downgrade(config, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()


def test_without_render_item_the_folded_migration_cannot_run(
    tmp_path: Path, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What render_item prevents: the migration names chimeway's type and fails to run."""
    plain = FOLDED_ENV.replace("            render_item=render_item,\n", "")
    assert plain != FOLDED_ENV
    config = _app(tmp_path, database, plain, monkeypatch)
    command.revision(config, message="broken", autogenerate=True)
    assert "chimeway_core.ledger.schema.UTCDateTime(" in _revision_text(tmp_path, "broken")
    with pytest.raises(NameError, match="chimeway_core"):
        command.upgrade(config, "head")


def test_excluding_chimeway_combines_with_the_apps_own_hooks() -> None:
    """A name passes when it is not chimeway's and the app's hook passes it too."""
    hooks = excluding_chimeway(
        lambda name, type_, parents: name != "legacy",
        lambda obj, name, type_, reflected, compare_to: name != "audit",
    )
    name, obj = hooks["include_name"], hooks["include_object"]
    assert [True, False, False, False] == [
        name("orders", "table", {}),
        name("legacy", "table", {}),
        name("chimeway_deliveries", "table", {}),
        name("ix_chimeway_outbox_created_at", "index", {"table_name": "chimeway_outbox"}),
    ]
    assert [True, False, False] == [
        obj(None, "orders", "table", True, None),
        obj(None, "audit", "table", True, None),
        obj(chimeway_metadata.tables["chimeway_outbox"], "chimeway_outbox", "table", False, None),
    ]
    index = next(iter(chimeway_metadata.tables["chimeway_outbox"].indexes))
    assert not obj(index, index.name, "index", False, None)
    assert excluding_chimeway()["include_name"]("orders", "table", {})
