"""``chimeway selftest --app``: chimeway's suites on an application as it is configured.

Each test writes an ordinary application module (its engine on its own
database and queue service, with a delivery of its own already there) and
runs the console script on it. The conformance suite and the real-time
stateful machine pass on the application's kind of backend, and when the
command ends nothing of theirs is left: no scratch namespace, no scratch
queue; the application's own delivery and queue are as they were.
"""

from __future__ import annotations

import re
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import pytest
from sqlalchemy import create_engine, inspect

from chimeway_core.records import NewDelivery
from chimeway_core.store import SQLStore
from tests.cli.conftest import run
from tests.services import RABBITMQ_URL, REDIS_URL, require

#: The Redis database of these tests alone.
REDIS_DB: Final = 1
APP_REDIS_URL: Final = f"{REDIS_URL.rsplit('/', 1)[0]}/{REDIS_DB}"
NOW: Final = datetime(2030, 1, 1, tzinfo=UTC)

#: The application modules, by backend: ``{db}`` and ``{service}`` are filled in.
APPS: Final = {
    "memory": """
        from chimeway_backends.memory import MemoryBackend
        from chimeway_core import Chimeway, LogChannel, SQLStore

        engine = Chimeway(SQLStore({db!r}), MemoryBackend(), {{"sms": LogChannel()}})
    """,
    "rq": """
        import redis

        from chimeway_backends.rq import RQBackend
        from chimeway_core import Chimeway, LogChannel, SQLStore

        backend = RQBackend(redis.Redis.from_url({service!r}), "app-notifications")
        engine = Chimeway(SQLStore({db!r}), backend, {{"sms": LogChannel()}})
    """,
    "celery": """
        from celery import Celery

        from chimeway_backends.celery import CeleryBackend
        from chimeway_core import Chimeway, LogChannel, SQLStore

        app = Celery("shop", broker={service!r}, set_as_current=False)
        backend = CeleryBackend(app, queue="app-notifications")
        engine = Chimeway(SQLStore({db!r}), backend, {{"sms": LogChannel()}})
    """,
    "dramatiq": """
        from dramatiq.brokers.redis import RedisBroker

        from chimeway_backends.dramatiq import DramatiqBackend
        from chimeway_core import Chimeway, LogChannel, SQLStore

        broker = RedisBroker(url={service!r}, namespace="dramatiq_selftest_app")
        backend = DramatiqBackend(broker, queue="app_notifications")
        engine = Chimeway(SQLStore({db!r}), backend, {{"sms": LogChannel()}})
    """,
}


def _write_app(tmp_path: Path, backend: str, db: str, service: str) -> None:
    (tmp_path / "myapp.py").write_text(
        textwrap.dedent(APPS[backend].format(db=db, service=service))
    )


def _selftest(tmp_path: Path, *extra: str) -> tuple[int, str]:
    result = run(
        "selftest",
        "--app",
        "myapp:engine",
        "--machine-examples",
        "3",
        *extra,
        "--",
        "-q",
        "-k",
        "TestApp",
        cwd=tmp_path,
        path=[tmp_path],
        timeout=600,
    )
    return result.code, result.stdout[-4000:] + result.stderr[-2000:]


def _own_delivery(db: str) -> str:
    store = SQLStore(db)
    store.create_all()
    try:
        spec = NewDelivery(channel="sms", recipient="+15550100", idempotency_key="mine")
        return str(store.create(spec, now=NOW).delivery.id)
    finally:
        store.engine.dispose()


def _left_alone(db: str, own: str) -> None:
    """Only the application's delivery in its ledger, and no scratch namespace left."""
    store = SQLStore(db)
    try:
        assert [own] == [str(delivery.id) for delivery in store.find()]
        assert 1 == store.outbox_size()
    finally:
        store.engine.dispose()
    engine = create_engine(db)
    try:
        schemas = inspect(engine).get_schema_names()
    finally:
        engine.dispose()
    assert not [name for name in schemas if name.startswith("chimeway_selftest")]


def test_memory_application_on_its_sqlite_file(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'app.db'}"
    own = _own_delivery(db)
    _write_app(tmp_path, "memory", db, "")
    code, output = _selftest(tmp_path)
    assert 0 == code, output
    assert re.search(r"\b1[0-9] passed\b", output), output
    _left_alone(db, own)
    assert ["app.db"] == sorted(p.name for p in tmp_path.glob("*.db*") if p.name != "app.db-wal")


@pytest.mark.postgres
@pytest.mark.redis
def test_rq_application_on_its_postgres_and_redis(fresh_postgres: str, tmp_path: Path) -> None:
    import redis

    require("redis")
    own = _own_delivery(fresh_postgres)
    client = redis.Redis.from_url(APP_REDIS_URL)
    client.flushdb()
    client.set("app-key", "kept")
    _write_app(tmp_path, "rq", fresh_postgres, APP_REDIS_URL)
    try:
        code, output = _selftest(tmp_path)
        assert 0 == code, output
        assert re.search(r"\b1[0-9] passed\b", output), output
        _left_alone(fresh_postgres, own)
        left = sorted(key.decode() for key in client.scan_iter(count=1000))
        assert not [key for key in left if "selftest" in key], left
        assert b"kept" == client.get("app-key")
    finally:
        client.flushdb()
        client.close()


@pytest.mark.postgres
@pytest.mark.rabbitmq
def test_celery_application_on_its_postgres_and_rabbitmq(
    fresh_postgres: str, tmp_path: Path
) -> None:
    require("rabbitmq")
    own = _own_delivery(fresh_postgres)
    _write_app(tmp_path, "celery", fresh_postgres, RABBITMQ_URL)
    code, output = _selftest(tmp_path)
    assert 0 == code, output
    assert re.search(r"\b1[0-9] passed\b", output), output
    _left_alone(fresh_postgres, own)


@pytest.mark.postgres
@pytest.mark.redis
def test_dramatiq_application_on_its_postgres_and_redis(
    fresh_postgres: str, tmp_path: Path
) -> None:
    """On Dramatiq's Redis broker (database 2): the scratch queue's keys are all gone after."""
    import redis

    require("redis")
    url = f"{REDIS_URL.rsplit('/', 1)[0]}/2"
    own = _own_delivery(fresh_postgres)
    client = redis.Redis.from_url(url)
    client.set("dramatiq_selftest_app:app_notifications.kept", "kept")
    _write_app(tmp_path, "dramatiq", fresh_postgres, url)
    try:
        code, output = _selftest(tmp_path)
        assert 0 == code, output
        assert re.search(r"\b1[0-9] passed\b", output), output
        _left_alone(fresh_postgres, own)
        left = sorted(key.decode() for key in client.scan_iter(match="dramatiq_selftest_app:*"))
        assert not [key for key in left if "chimeway_selftest" in key], left
        assert b"kept" == client.get("dramatiq_selftest_app:app_notifications.kept")
    finally:
        for key in client.scan_iter(match="dramatiq_selftest_app:*"):
            client.delete(key)
        client.close()


@pytest.mark.postgres
def test_an_unreachable_queue_service_fails_the_run(fresh_postgres: str, tmp_path: Path) -> None:
    """The suite can fail: an application whose Redis does not answer gets exit 1."""
    _write_app(tmp_path, "rq", fresh_postgres, "redis://127.0.0.1:1/0")
    code, output = _selftest(tmp_path, "--examples", "1")
    assert 1 == code, output
    assert "failed" in output


def test_an_application_that_does_not_load_fails_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "myapp.py").write_text("raise RuntimeError('no config')\n")
    code, output = _selftest(tmp_path)
    assert 1 == code, output
    assert "CHIMEWAY_SELFTEST_APP='myapp:engine': EngineNotFoundError" in output
    assert "no config" in output


def test_a_malformed_app_is_a_usage_error(tmp_path: Path) -> None:
    result = run("selftest", "--app", "myapp", cwd=tmp_path)
    assert 2 == result.code
    assert "--app 'myapp': expected MODULE:ATTRIBUTE (like myapp.notify:engine)" in result.stderr
