"""examples/fastapi_celery driven for real: FastAPI's test client, asyncpg, RabbitMQ, a worker.

The application notifies inside its async SQLAlchemy transactions through
``AsyncChimeway``; a real ``chimeway worker --backend celery`` process then
sends the emails to a real SMTP server.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from types import ModuleType

import attrs
import httpx
import pytest
from kombu import Connection
from sqlalchemy import create_engine

from chimeway_core import DeliveryStatus
from tests.channels.conftest import SMTPTestServer
from tests.examples.conftest import (
    ROOT,
    deliver_with_celery,
    load_example,
    missing_quotes,
)
from tests.services import RABBITMQ_URL, fresh_postgres_database, require

pytestmark = [pytest.mark.extras, pytest.mark.postgres, pytest.mark.rabbitmq]

APP = "examples.fastapi_celery.notify:engine"


@attrs.frozen
class Deployment:
    """The example running on this test's database, queue and mail server."""

    env: dict[str, str]
    runner: asyncio.Runner
    client: httpx.AsyncClient
    notify_module: ModuleType
    smtp: SMTPTestServer
    queue: str

    def post(self, path: str, body: object) -> httpx.Response:
        """A request to the application, on the event loop every request of the test shares."""
        return self.runner.run(self.client.post(path, json=body))

    def queued(self) -> int:
        """Messages waiting on the example's Celery queue."""
        with Connection(RABBITMQ_URL) as connection:
            _, count, _ = connection.default_channel.queue_declare(self.queue, passive=True)
        return int(count)

    def deliver(self, expected: int) -> list[str]:
        """Run a real worker until ``expected`` emails arrived; the recipients, in order."""
        return deliver_with_celery(APP, self.env, self.smtp, expected)


@pytest.fixture
def deployment(
    smtp_server: SMTPTestServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Deployment]:
    """A fresh database (chimeway's migrations and the app's tables), a queue, a mail server."""
    require("rabbitmq")
    queue = f"chimeway-example-{secrets.token_hex(6)}"
    with fresh_postgres_database("chimeway_fastapi") as database_url:
        env = {
            "DATABASE_URL": database_url,
            "ASYNC_DATABASE_URL": database_url.replace("+psycopg", "+asyncpg"),
            "CELERY_BROKER_URL": RABBITMQ_URL,
            "CHIMEWAY_QUEUE": queue,
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(smtp_server.port),
        }
        notify_module, app_module = load_example("fastapi_celery", env, monkeypatch)
        tables = create_engine(database_url)
        app_module.Base.metadata.create_all(tables)
        tables.dispose()
        app = app_module.create_app()
        runner = asyncio.Runner()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://shop")
        try:
            yield Deployment(env, runner, client, notify_module, smtp_server, queue)
        finally:
            runner.run(client.aclose())
            runner.run(app.state.database.dispose())
            runner.close()
            notify_module.engine.store.engine.dispose()
            with Connection(RABBITMQ_URL) as connection:
                connection.default_channel.queue_delete(queue)


def test_an_order_is_confirmed_once_its_request_commits(deployment: Deployment) -> None:
    """Committed with the order, queued at the commit, sent by a real Celery worker."""
    response = deployment.post("/orders", {"email": "ada@example.test", "item": "tea"})
    assert 201 == response.status_code
    engine = deployment.notify_module.engine
    [delivery] = engine.store.find()
    assert ({"order": response.json()["id"], "item": "tea"}, 1) == (
        delivery.payload,
        deployment.queued(),
    )
    assert ["ada@example.test"] == deployment.deliver(1)
    assert DeliveryStatus.SUCCEEDED is engine.get(delivery.id).delivery.status


def test_a_failed_request_and_a_refused_savepoint_leave_nothing_behind(
    deployment: Deployment,
) -> None:
    """An async rollback and a savepoint rollback: no order, no delivery, no job."""
    failed = deployment.post(
        "/orders", {"email": "bob@example.test", "item": "tea", "fail_after_notify": True}
    )
    assert 500 == failed.status_code
    batch = [
        {"email": "ann@example.test", "item": "out of stock"},
        {"email": "cy@example.test", "item": "coffee"},
    ]
    placed = deployment.post("/orders/batch", batch)
    assert 201 == placed.status_code
    assert 1 == len(placed.json()["placed"])
    engine = deployment.notify_module.engine
    assert ["cy@example.test"] == [d.recipient for d in engine.store.find()]
    assert 1 == deployment.queued()
    assert ["cy@example.test"] == deployment.deliver(1)


def test_the_fastapi_page_quotes_the_example_as_it_is() -> None:
    """Every line of docs/frameworks/fastapi.md's Python blocks is a line of the example."""
    quoted_lines_missing = missing_quotes(
        ROOT / "docs" / "frameworks" / "fastapi.md",
        [ROOT / "examples" / "fastapi_celery" / name for name in ("app.py", "notify.py")],
    )
    assert [] == quoted_lines_missing
