"""examples/flask_rq driven for real: Flask's test client, PostgreSQL, Redis, an RQ worker.

The application notifies inside its own request transactions through
Flask-SQLAlchemy's ``db.session``; a real ``chimeway worker --backend rq``
process then sends the emails to a real SMTP server.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from types import ModuleType

import attrs
import pytest
import redis
from flask import Flask

from chimeway_core import DeliveryStatus
from tests.backends.rq.conftest import purge, redis_url
from tests.channels.conftest import SMTPTestServer
from tests.cli.conftest import COMMAND
from tests.examples.conftest import ROOT, load_example, missing_quotes, recipients
from tests.services import fresh_postgres_database, require

pytestmark = [pytest.mark.extras, pytest.mark.postgres, pytest.mark.redis]

APP = "examples.flask_rq.notify:engine"
#: The Redis database the examples' tests write to (6 to 15 belong to other tests and the
#: benchmarks; see tests/backends/rq/conftest.py).
REDIS_EXAMPLES_DB = 7


@attrs.frozen
class Deployment:
    """The example running on this test's database, queue and mail server."""

    env: dict[str, str]
    app: Flask
    app_module: ModuleType
    notify_module: ModuleType
    smtp: SMTPTestServer
    queue: str

    def run_worker(self) -> subprocess.CompletedProcess[str]:
        """``chimeway worker --backend rq --burst`` on the example's engine."""
        return subprocess.run(
            [*COMMAND, "worker", "--backend", "rq", "--app", APP, "--burst"],
            cwd=ROOT,
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def recipients(self) -> list[str]:
        """Who the SMTP server received mail for, in order."""
        return recipients(self.smtp)


@pytest.fixture
def deployment(
    smtp_server: SMTPTestServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Deployment]:
    """A fresh database (chimeway's migrations and the app's tables), a queue, a mail server."""
    require("redis")
    queue = f"chimeway-example-{secrets.token_hex(6)}"
    with fresh_postgres_database("chimeway_flask") as database_url:
        env = {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url(REDIS_EXAMPLES_DB),
            "CHIMEWAY_QUEUE": queue,
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(smtp_server.port),
        }
        notify_module, app_module = load_example("flask_rq", env, monkeypatch)
        app = app_module.create_app()
        with app.app_context():
            app_module.db.create_all()
        try:
            yield Deployment(env, app, app_module, notify_module, smtp_server, queue)
        finally:
            with app.app_context():
                app_module.db.engine.dispose()
            notify_module.engine.store.engine.dispose()
            connection = redis.Redis.from_url(redis_url(REDIS_EXAMPLES_DB))
            purge(connection, queue)
            connection.close()


def _queued(deployment: Deployment) -> int:
    backend = deployment.notify_module.engine.backend
    return int(backend.queue.count)


def test_a_sign_up_sends_its_welcome_email_once_the_request_commits(
    deployment: Deployment,
) -> None:
    """Committed with the user, queued at the commit, sent by a real worker."""
    client = deployment.app.test_client()
    response = client.post("/signup", json={"email": "ada@example.test", "name": "Ada"})
    assert 201 == response.status_code
    engine = deployment.notify_module.engine
    [delivery] = engine.store.find(recipient="ada@example.test")
    assert ("email", {"name": "Ada"}) == (delivery.channel, delivery.payload)
    assert 1 == _queued(deployment)
    worker = deployment.run_worker()
    assert 0 == worker.returncode, worker.stderr
    assert ["ada@example.test"] == deployment.recipients()
    assert DeliveryStatus.SUCCEEDED is engine.get(delivery.id).delivery.status
    assert b"Hello Ada, welcome aboard." in deployment.smtp.handler.messages[0]


def test_a_failed_request_leaves_no_user_no_delivery_and_no_job(deployment: Deployment) -> None:
    """An exception after notify() and a taken email both roll the request back."""
    app = deployment.app
    client = app.test_client()
    assert (
        201 == client.post("/signup", json={"email": "ada@example.test", "name": "Ada"}).status_code
    )
    taken = client.post("/signup", json={"email": "ada@example.test", "name": "Eve"})
    assert 409 == taken.status_code
    app.config["PROPAGATE_EXCEPTIONS"] = False  # the failure becomes a 500, as in production
    failed = client.post(
        "/signup", json={"email": "bob@example.test", "name": "Bob", "fail_after_notify": True}
    )
    assert 500 == failed.status_code
    engine = deployment.notify_module.engine
    assert ["ada@example.test"] == [d.recipient for d in engine.store.find()]
    assert 1 == _queued(deployment)


def test_invitations_in_savepoints_send_exactly_what_was_committed(
    deployment: Deployment,
) -> None:
    """A savepoint rolled back takes its notification along, and only its own.

    The inviter's notification, written before the first savepoint, survives
    the savepoints rolled back after it and is queued at the commit.
    """
    client = deployment.app.test_client()
    emails = ["bounce@example.test", "ann@example.test", "ann@example.test", "cy@example.test"]
    response = client.post("/invite", json={"inviter": "ada@example.test", "emails": emails})
    assert 201 == response.status_code
    assert ["ann@example.test", "cy@example.test"] == response.get_json()["invited"]
    engine = deployment.notify_module.engine
    sent = {"ada@example.test", "ann@example.test", "cy@example.test"}
    assert sent == {d.recipient for d in engine.store.find()}
    assert 3 == _queued(deployment)
    worker = deployment.run_worker()
    assert 0 == worker.returncode, worker.stderr
    assert sorted(sent) == sorted(deployment.recipients())


def test_the_flask_page_quotes_the_example_as_it_is() -> None:
    """Every line of docs/frameworks/flask.md's Python blocks is a line of the example.

    The page explains the application the test runs, so the two cannot drift.
    """
    quoted_lines_missing = missing_quotes(
        ROOT / "docs" / "frameworks" / "flask.md",
        [ROOT / "examples" / "flask_rq" / name for name in ("app.py", "notify.py")],
    )
    assert [] == quoted_lines_missing
