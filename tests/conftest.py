"""Shared test configuration: hypothesis profiles and the ledger fixtures.

``HYPOTHESIS_PROFILE=ci`` (set by the nox ``tests`` session) runs more
examples with no deadline; ``dev`` is the quick default.

PostgreSQL gets one fresh database per test session (``chimeway_test_<random>``),
created through ``POSTGRES_ADMIN_URL`` and dropped at the end; tables are
truncated between tests. SQLite gets a new file per test. ``store`` runs a
test once on each.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings
from sqlalchemy import Engine, create_engine

from chimeway_core.schema import metadata
from chimeway_core.store import SQLStore
from tests.services import fresh_postgres_database, truncate_tables

pytest_plugins = ["tests.selection"]

settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile(
    "ci",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test session; yields its URL."""
    with fresh_postgres_database("chimeway_test") as url:
        yield url


@pytest.fixture(scope="session")
def postgres_engine(postgres_database: str) -> Iterator[Engine]:
    """An engine on the session database with chimeway's tables created."""
    engine = create_engine(postgres_database, pool_size=25, max_overflow=10)
    metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_store(postgres_engine: Engine) -> Iterator[SQLStore]:
    """A store on PostgreSQL with empty tables."""
    store = SQLStore(postgres_engine)
    yield store
    truncate_tables(postgres_engine)


@pytest.fixture
def sqlite_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SQLStore]:
    """A store on a fresh SQLite file (WAL) with chimeway's tables."""
    path = tmp_path_factory.mktemp("ledger") / "ledger.db"
    store = SQLStore(f"sqlite:///{path}")
    store.create_all()
    yield store
    store.engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest) -> SQLStore:
    """The store under test, once per database."""
    fixture = "sqlite_store" if request.param == "sqlite" else "pg_store"
    result: SQLStore = request.getfixturevalue(fixture)
    return result


@pytest.fixture
def table_without_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The dispatch table with its ``temporary_retry`` row changed to ACK (retries dropped).

    The stateful machines' negative controls: with it a temporary failure
    leaks a live delivery, which the machine must report.
    """
    from chimeway_core import Action, dispatch

    broken = {
        key: ((Action.ACK, row) if row == "temporary_retry" else (action, row))
        for key, (action, row) in dispatch._TABLE.items()
    }
    monkeypatch.setattr(dispatch, "_TABLE", broken)
