"""examples/django_celery driven for real: Django's server, its database, Celery on Redis, a worker.

The shop notifies inside ``transaction.atomic()`` through ``DjangoChimeway``,
on Django's own connection, on PostgreSQL (psycopg 3) and on SQLite. The
test runs the project as deployed: ``manage.py migrate``, ``manage.py
runserver`` serving HTTP requests, and a real ``chimeway worker --backend
celery`` process that sends the emails to a real SMTP server.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import attrs
import httpx
import pytest
import redis
from sqlalchemy import text

from chimeway_core import DeliveryStatus, SQLStore
from chimeway_core.migrations import upgrade
from tests.channels.conftest import SMTPTestServer, free_port
from tests.examples.conftest import ROOT, deliver_with_celery, missing_quotes
from tests.services import REDIS_URL, fresh_postgres_database, require

pytestmark = [pytest.mark.extras, pytest.mark.redis]

APP = "examples.django_celery.notify:engine"
MANAGE = (sys.executable, "-m", "examples.django_celery.manage")
#: The Redis database this module's Celery broker uses, apart from other tests'.
BROKER_URL = REDIS_URL.rsplit("/", 1)[0] + "/3"


@attrs.frozen
class Deployment:
    """The shop serving on this test's database, Celery queue and mail server."""

    env: dict[str, str]
    base_url: str
    store: SQLStore
    smtp: SMTPTestServer
    queue: str
    broker: redis.Redis

    def post(self, path: str, body: object) -> httpx.Response:
        """A request to the shop's server."""
        return httpx.post(f"{self.base_url}{path}", json=body, timeout=60)

    def queued(self) -> int:
        """Messages waiting on the shop's Celery queue."""
        return int(self.broker.llen(self.queue))

    def orders(self) -> list[str]:
        """The items of the orders in Django's table."""
        with self.store.engine.connect() as conn:
            return list(conn.scalars(text("SELECT item FROM shop_order ORDER BY id")))

    def deliver(self, expected: int) -> list[str]:
        """Run a real worker until ``expected`` emails arrived; the recipients, in order."""
        return deliver_with_celery(APP, self.env, self.smtp, expected)


@contextmanager
def database(kind: str, folder: Path) -> Iterator[str]:
    """An empty database of ``kind`` for one test: its SQLAlchemy URL; dropped after."""
    if kind == "sqlite":
        yield f"sqlite:///{folder / 'shop.sqlite3'}"
        return
    with fresh_postgres_database("django_ex") as url:
        yield url


def serve(env: dict[str, str], log: IO[str]) -> tuple[subprocess.Popen[str], str]:
    """``manage.py runserver`` on a free port, once it answers; the process and its URL."""
    base_url = f"http://127.0.0.1:{free_port()}"
    server = subprocess.Popen(
        [*MANAGE, "runserver", "--noreload", base_url.removeprefix("http://")],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 90
    while True:
        try:
            httpx.get(f"{base_url}/orders", timeout=5)  # 405: it serves
        except httpx.TransportError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                server.wait()
                log.seek(0)
                pytest.fail(f"runserver never answered:\n{log.read()}")
            time.sleep(0.2)
        else:
            return server, base_url


@pytest.fixture(params=[pytest.param("postgresql", marks=pytest.mark.postgres), "sqlite"])
def deployment(
    request: pytest.FixtureRequest, smtp_server: SMTPTestServer, tmp_path: Path
) -> Iterator[Deployment]:
    """The shop migrated (chimeway's tables and Django's) and serving; a queue, a mail server."""
    require("redis")
    queue = f"django_ex_{secrets.token_hex(6)}"
    broker = redis.Redis.from_url(BROKER_URL)
    with database(request.param, tmp_path) as database_url:
        env = {
            "DATABASE_URL": database_url,
            "CELERY_BROKER_URL": BROKER_URL,
            "CHIMEWAY_QUEUE": queue,
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(smtp_server.port),
            "DJANGO_SETTINGS_MODULE": "examples.django_celery.settings",
        }
        upgrade(database_url)
        subprocess.run(
            [*MANAGE, "migrate", "--no-input"],
            cwd=ROOT,
            env={**os.environ, **env},
            check=True,
            capture_output=True,
        )
        store = SQLStore(database_url)
        with (tmp_path / "runserver.log").open("w+") as log:
            server, base_url = serve(env, log)
            try:
                yield Deployment(env, base_url, store, smtp_server, queue, broker)
            finally:
                server.terminate()
                server.wait(timeout=60)
                store.engine.dispose()
                for key in broker.scan_iter(match=f"*{queue}*"):
                    broker.delete(key)
                broker.close()


def test_an_order_is_confirmed_once_its_atomic_block_commits(deployment: Deployment) -> None:
    """Written with the order on Django's connection, queued at the commit, sent once."""
    response = deployment.post("/orders", {"email": "ada@example.test", "item": "tea"})
    assert 201 == response.status_code
    [delivery] = deployment.store.find()
    assert ({"order": response.json()["id"], "item": "tea"}, 1) == (
        delivery.payload,
        deployment.queued(),
    )
    assert ["ada@example.test"] == deployment.deliver(1)
    assert DeliveryStatus.SUCCEEDED is deployment.store.get(delivery.id).status


def test_a_rolled_back_atomic_block_leaves_no_order_no_delivery_no_job(
    deployment: Deployment,
) -> None:
    """The request fails after notifying: Django rolls back the order and the delivery."""
    failed = deployment.post(
        "/orders", {"email": "bob@example.test", "item": "tea", "fail_after_notify": True}
    )
    assert 500 == failed.status_code
    assert ([], [], 0) == (deployment.orders(), deployment.store.find(), deployment.queued())


def test_a_rolled_back_savepoint_drops_only_its_own_notification(deployment: Deployment) -> None:
    """In a committed block, the order refused in its savepoint is neither kept nor sent."""
    batch = [
        {"email": "ann@example.test", "item": "out of stock"},
        {"email": "cy@example.test", "item": "coffee"},
    ]
    placed = deployment.post("/orders/batch", batch)
    assert 201 == placed.status_code
    assert ["coffee"] == deployment.orders()
    assert ["cy@example.test"] == [d.recipient for d in deployment.store.find()]
    assert 1 == deployment.queued()
    assert ["cy@example.test"] == deployment.deliver(1)


def test_the_django_page_quotes_the_example_as_it_is() -> None:
    """Every line of docs/frameworks/django.md's Python blocks is a line of the example."""
    example = ROOT / "examples" / "django_celery"
    quoted_lines_missing = missing_quotes(
        ROOT / "docs" / "frameworks" / "django.md",
        [example / "notify.py", example / "settings.py", example / "shop" / "views.py"],
    )
    assert [] == quoted_lines_missing
