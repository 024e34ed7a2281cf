"""DjangoChimeway: notify on Django's own connection, in its transaction, on PostgreSQL and SQLite.

Django is configured once for this module with two aliases: ``default``
(SQLite) and ``pg`` (PostgreSQL, psycopg 3), with ``USE_TZ`` off and a
``TIME_ZONE`` away from UTC, the settings that would bend timestamps if
chimeway read them Django's way. The backend is the in-memory one: what it
holds is what was handed over.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import attrs
import django
import pytest
from django.conf import settings
from django.db import connections, transaction
from sqlalchemy import create_engine, delete, make_url, text

from chimeway_core import Chimeway, Enqueued, NewDelivery, SQLStore
from chimeway_core.django import DjangoChimeway
from chimeway_core.errors import (
    BackendUnavailableError,
    IdempotencyKeyConflictError,
    InvalidDeliveryError,
    UnsupportedDatabaseError,
)
from chimeway_core.ledger.schema import metadata
from chimeway_core.memory import MemoryBackend
from chimeway_core.migrations import upgrade
from chimeway_core.testing import FakeChannel
from tests.services import POSTGRES_ADMIN_URL, require

pytestmark = pytest.mark.extras

#: The PostgreSQL database of this module, created when a test first needs it.
PG_NAME = f"django_ex_{secrets.token_hex(6)}"
PG_URL = make_url(POSTGRES_ADMIN_URL).set(database=PG_NAME).render_as_string(False)


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Django configured (once per process); the SQLite database's URL, migrated."""
    path: Path = tmp_path_factory.mktemp("django") / "db.sqlite3"
    if not settings.configured:
        admin = make_url(POSTGRES_ADMIN_URL)
        settings.configure(
            DATABASES={
                "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(path)},
                "pg": {
                    "ENGINE": "django.db.backends.postgresql",
                    "NAME": PG_NAME,
                    "USER": admin.username or "",
                    "PASSWORD": admin.password or "",
                    "HOST": admin.host or "",
                    "PORT": str(admin.port or ""),
                },
            },
            USE_TZ=False,
            TIME_ZONE="America/New_York",
        )
        django.setup()
    url = f"sqlite:///{connections['default'].settings_dict['NAME']}"
    upgrade(url)
    yield url
    connections["default"].close()


@pytest.fixture(scope="module")
def pg_url(sqlite_url: str) -> Iterator[str]:
    """The module's PostgreSQL database, created and migrated; dropped after."""
    del sqlite_url  # Django is configured
    require("postgres")
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{PG_NAME}"'))
    try:
        upgrade(PG_URL)
        yield PG_URL
    finally:
        connections["pg"].close()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{PG_NAME}" WITH (FORCE)'))
        admin.dispose()


class RolledBackError(Exception):
    """Raised out of an atomic block to roll it back."""


@attrs.frozen
class Shop:
    """An engine on one alias's database, its Django front door, and its queue."""

    alias: str
    engine: Chimeway
    notifications: DjangoChimeway
    backend: MemoryBackend

    def handed_over(self) -> list[str]:
        """The recipients of the deliveries handed to the backend, in order."""
        ids = [job.delivery_id for job in self.backend.pending()]
        return [self.engine.get(delivery_id).delivery.recipient for delivery_id in ids]

    def recipients(self) -> list[str]:
        """The recipients of the deliveries in the ledger, sorted."""
        return sorted(d.recipient for d in self.engine.store.find())

    def execute(self, sql: str) -> object:
        """One statement on Django's connection; its first column of the first row."""
        with connections[self.alias].cursor() as cursor:
            cursor.execute(sql)
            row = cursor.fetchone()
        return None if row is None else row[0]


def empty(store: SQLStore) -> SQLStore:
    """``store`` with every chimeway table emptied."""
    with store.engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(delete(table))
    return store


@pytest.fixture(params=[pytest.param("pg", marks=pytest.mark.postgres), "default"])
def shop(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[Shop]:
    """A shop on an empty ledger of ``default`` (SQLite) or ``pg`` (PostgreSQL)."""
    url = request.getfixturevalue("pg_url") if request.param == "pg" else sqlite_url
    store = empty(SQLStore(url))
    backend = MemoryBackend()
    engine = Chimeway(store, backend, {"sms": FakeChannel()})
    try:
        yield Shop(request.param, engine, DjangoChimeway(engine, using=request.param), backend)
    finally:
        store.engine.dispose()


def test_a_committed_block_hands_over_after_its_commit(shop: Shop) -> None:
    """Written in Django's transaction, invisible to others until it commits, then queued."""
    with transaction.atomic(using=shop.alias):
        delivery = shop.notifications.notify("sms", "+15550100", {"n": 1})
        seen_inside = (shop.recipients(), shop.handed_over())
    assert ([], []) == seen_inside
    assert (["+15550100"], ["+15550100"]) == (shop.recipients(), shop.handed_over())
    assert delivery.id == shop.backend.pending()[0].delivery_id


def test_a_rolled_back_block_leaves_no_delivery_and_no_job(shop: Shop) -> None:
    """An exception out of the atomic block: nothing written, nothing queued."""
    with suppress(RolledBackError), transaction.atomic(using=shop.alias):
        shop.notifications.notify("sms", "+15550100")
        shop.notifications.notify_many([NewDelivery(channel="sms", recipient="+15550101")])
        raise RolledBackError
    assert ([], []) == (shop.recipients(), shop.handed_over())


def test_a_savepoint_rolled_back_in_a_committed_block_drops_only_its_own(shop: Shop) -> None:
    """The outer notification is sent; the one in the rolled-back nested block is not."""
    with transaction.atomic(using=shop.alias):
        shop.notifications.notify("sms", "+15550100")
        with transaction.atomic(using=shop.alias):
            shop.notifications.notify("sms", "+15550101")
            transaction.set_rollback(True, using=shop.alias)
        with suppress(RolledBackError), transaction.atomic(using=shop.alias):
            shop.notifications.notify("sms", "+15550102")
            raise RolledBackError
        with transaction.atomic(using=shop.alias):
            shop.notifications.notify("sms", "+15550103")  # released: handed over at the end
        assert [] == shop.handed_over()
    assert (["+15550100", "+15550103"], ["+15550100", "+15550103"]) == (
        shop.recipients(),
        shop.handed_over(),
    )


def test_outside_a_block_a_call_commits_and_hands_over_at_once(shop: Shop) -> None:
    """No atomic block around: the call is its own transaction; Django stays in autocommit."""
    shop.notifications.notify("sms", "+15550100")
    connection = connections[shop.alias]
    assert (["+15550100"], True, False) == (
        shop.handed_over(),
        connection.get_autocommit(),
        connection.in_atomic_block,
    )


def test_a_call_that_raises_leaves_the_callers_transaction_usable(shop: Shop) -> None:
    """Bad input and a key held by another request write nothing; the block still commits."""
    with transaction.atomic(using=shop.alias):
        first = shop.notifications.notify("sms", "+15550100", idempotency_key="order-1")
        with pytest.raises(InvalidDeliveryError):
            shop.notifications.notify("sms", "")
        with pytest.raises(IdempotencyKeyConflictError):
            shop.notifications.notify("sms", "+15550199", idempotency_key="order-1")
        again = shop.notifications.notify("sms", "+15550100", idempotency_key="order-1")
        assert 1 == shop.execute("SELECT 1")
    assert (first.id, ["+15550100"], ["+15550100"]) == (
        again.id,
        shop.recipients(),
        shop.handed_over(),
    )


def test_timestamps_read_through_django_are_utc_whatever_its_settings(shop: Shop) -> None:
    """USE_TZ off, TIME_ZONE New York: a delivery read back through Django's connection is UTC."""
    before = datetime.now(UTC)
    with transaction.atomic(using=shop.alias):
        shop.notifications.notify("sms", "+15550100", idempotency_key="k")
        # A repeat reads the delivery back from the database, through Django's connection.
        again = shop.notifications.notify("sms", "+15550100", idempotency_key="k")
    assert before - timedelta(seconds=1) <= again.created_at <= datetime.now(UTC)


def test_a_rolled_back_resend_leaves_no_copy(shop: Shop) -> None:
    """resend() in a block rolled back: the original stays cancelled, with no copy queued."""
    original = shop.notifications.notify("sms", "+15550100")
    shop.engine.cancel(original.id)
    with suppress(RolledBackError), transaction.atomic(using=shop.alias):
        shop.notifications.resend(original.id)
        raise RolledBackError
    with transaction.atomic(using=shop.alias):
        copy = shop.notifications.resend(original.id).copy
    assert [original.id, copy.id] == [job.delivery_id for job in shop.backend.pending()]


def test_djangos_connection_keeps_what_django_set_up(shop: Shop) -> None:
    """SQLAlchemy's connect hooks never run on Django's connection: its REGEXP, its notices."""
    with transaction.atomic(using=shop.alias):
        shop.notifications.notify("sms", "+15550100")
    connection = connections[shop.alias]
    if connection.vendor == "sqlite":
        # Django's REGEXP takes any value; SQLAlchemy's would raise on an integer.
        assert 1 == shop.execute("SELECT 5 REGEXP '5'")
    else:
        assert [] == connection.connection._notice_handlers


def test_a_ledger_on_another_kind_of_database_is_refused(sqlite_url: str) -> None:
    """Django's alias on PostgreSQL, the engine's ledger on SQLite: an error before any write."""
    store = SQLStore(sqlite_url)
    notifications = DjangoChimeway(Chimeway(store, MemoryBackend(), {"sms": FakeChannel()}))
    before = store.find()
    with pytest.raises(UnsupportedDatabaseError, match="postgresql"):
        notifications.notify("sms", "+15550100", using="pg")  # refused before connecting
    assert before == store.find()
    store.engine.dispose()


def test_arguments_of_the_wrong_type_are_refused() -> None:
    """A non-engine, or an alias that is no str: TypeError naming it."""
    with pytest.raises(TypeError, match="engine must be a Chimeway"):
        DjangoChimeway(object())  # type: ignore[arg-type]
    engine = Chimeway(SQLStore("sqlite://"), MemoryBackend(), {"sms": FakeChannel()})
    with pytest.raises(TypeError, match="using must be a str"):
        DjangoChimeway(engine, using=1)  # type: ignore[arg-type]
    engine.store.engine.dispose()  # type: ignore[attr-defined]


class _BrokerDown(MemoryBackend):
    """A backend whose broker is unreachable."""

    def _enqueue_many(self, delivery_ids: list[UUID], queue: str) -> list[Enqueued]:
        raise BackendUnavailableError("memory", "broker", "connection refused")


def test_a_broker_down_at_the_commit_keeps_the_commit_and_the_outbox_row(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The block commits; Django logs the failed hand-over; the relay queues it later."""
    store = empty(SQLStore(sqlite_url))
    engine = Chimeway(store, _BrokerDown(), {"sms": FakeChannel()})
    ran: list[str] = []
    with (
        caplog.at_level(logging.ERROR, logger="django.db.backends.base"),
        transaction.atomic(),
    ):
        delivery = DjangoChimeway(engine).notify("sms", "+15550100")
        transaction.on_commit(lambda: ran.append("the app's own callback"))
    assert (["+15550100"], 1, ["the app's own callback"]) == (
        [d.recipient for d in store.find()],
        store.outbox_size(),
        ran,
    )
    assert delivery.id == store.get(delivery.id).id
    assert ["BackendUnavailableError"] == [
        type(record.exc_info[1]).__name__ for record in caplog.records if record.exc_info
    ]
    store.engine.dispose()


@pytest.mark.parametrize("elsewhere", ["another file", "memory"])
def test_a_ledger_on_another_database_of_the_same_kind_is_refused(
    sqlite_url: str, tmp_path: Path, elsewhere: str
) -> None:
    """Django's alias on one SQLite file, the ledger on another (or in memory): an error."""
    url = f"sqlite:///{tmp_path / 'other.sqlite3'}" if elsewhere == "another file" else "sqlite://"
    store = SQLStore(url)
    notifications = DjangoChimeway(Chimeway(store, MemoryBackend(), {"sms": FakeChannel()}))
    django = SQLStore(sqlite_url)
    before = django.find()
    with pytest.raises(UnsupportedDatabaseError, match="SQLStore on Django's database 'default'"):
        notifications.notify("sms", "+15550100")
    assert before == django.find()
    store.engine.dispose()
    django.engine.dispose()


@pytest.mark.postgres
def test_a_ledger_on_another_postgresql_database_is_refused(pg_url: str) -> None:
    """Django's ``pg`` alias on this module's database, the ledger on the admin one: an error."""
    store = SQLStore(POSTGRES_ADMIN_URL)
    notifications = DjangoChimeway(Chimeway(store, MemoryBackend(), {"sms": FakeChannel()}))
    with pytest.raises(
        UnsupportedDatabaseError, match=f"SQLStore on Django's database 'pg' \\({PG_NAME}\\)"
    ):
        notifications.notify("sms", "+15550100", using="pg")
    store.engine.dispose()
    assert PG_NAME in pg_url


@pytest.mark.postgres
def test_a_store_in_a_postgresql_namespace_writes_there_in_djangos_transaction(
    pg_url: str,
) -> None:
    """The namespace's tables get the delivery; the default schema's ledger stays empty."""
    store = SQLStore(pg_url, namespace="shop_ns")
    store.create_all()
    backend = MemoryBackend()
    engine = Chimeway(store, backend, {"sms": FakeChannel()})
    plain = empty(SQLStore(pg_url))
    try:
        with transaction.atomic(using="pg"):
            DjangoChimeway(engine, using="pg").notify("sms", "+15550100")
            with suppress(RolledBackError), transaction.atomic(using="pg"):
                DjangoChimeway(engine, using="pg").notify("sms", "+15550101")
                raise RolledBackError
        assert ["+15550100"] == [d.recipient for d in store.find()]
        assert [] == plain.find()
        assert 1 == len(backend.pending())
    finally:
        with store.engine.begin() as conn:
            conn.execute(text("DROP SCHEMA shop_ns CASCADE"))
        store.engine.dispose()
        plain.engine.dispose()


def test_a_sqlite_namespace_is_refused_before_anything_is_written(sqlite_url: str) -> None:
    store = SQLStore(sqlite_url, namespace="shop_ns")
    engine = Chimeway(store, MemoryBackend(), {"sms": FakeChannel()})
    try:
        with pytest.raises(UnsupportedDatabaseError, match="SQLite namespace is an attached file"):
            DjangoChimeway(engine).notify("sms", "+15550100")
        assert not connections["default"].in_atomic_block
    finally:
        store.engine.dispose()
