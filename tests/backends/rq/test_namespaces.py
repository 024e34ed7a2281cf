"""Two applications on one PostgreSQL database, each in its own namespace, side by side.

Each application has its own namespace, queue, channel log and worker (a
real ``rq worker`` process running :mod:`tests.backends.rq.worker_app`).
For :data:`ROUNDS` rounds, a quarter of a second apart, the test notifies on
both while their workers run (half through the queue, half left in the
outbox for the workers' relay, as after a failed hand-over), then waits
until nothing is live. Not one delivery crosses: each worker's channel is
called only for its own application's deliveries, each delivery ends as its
script says, and what ended with a send was sent exactly once.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from chimeway_core import NewDelivery
from chimeway_core.states import LIVE_STATUSES
from tests.backends.rq import worker_app
from tests.backends.rq.conftest import REDIS_TEST_DB, purge, redis_url
from tests.backends.rq.test_workers import App, spawn, wait_until

__all__ = ["spawn"]  # the fixture, shared with test_workers

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

#: How many rounds both applications notify, side by side: a fixed amount of
#: work (not a fixed time), so a busy machine takes longer but checks as much.
ROUNDS = 80
#: How long the workers may take to settle it all; generous, as a loaded
#: machine runs them several times slower (the wait ends as soon as they do).
SETTLE_TIMEOUT = 900.0


@pytest.fixture
def apps(
    tmp_path: Path,
    postgres_database: str,
    postgres_engine: Engine,
    spawn: Callable[[App, str], subprocess.Popen[bytes]],
) -> Iterator[list[App]]:
    """Two applications in two fresh namespaces, each with its worker running."""
    made = []
    for side in ("a", "b"):
        namespace = f"ns_{side}_{secrets.token_hex(4)}"
        (tmp_path / side).mkdir()
        app = App(
            db_url=postgres_database,
            redis_url=redis_url(REDIS_TEST_DB),
            queue=f"chimeway-test-{namespace}",
            calls=tmp_path / side / "calls.jsonl",
            markers=tmp_path / side,
            db=postgres_engine,
            settings={"APP_NAMESPACE": namespace, "APP_REQUEUE_AFTER": "5"},
        )
        app.engine.store.create_all()
        made.append(app)
    for app in made:
        spawn(app, "chimeway_backends.rq.ChimewayWorker")
    yield made
    for app in made:
        purge(app.backend.connection, app.queue)
        app.engine.store.engine.dispose()
        app.backend.connection.close()
        with postgres_engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {app.engine.store.namespace} CASCADE"))


def _notify(app: App, side: str, n: int) -> None:
    """One delivery through the queue and one left in the outbox for the relay."""
    queued, left = (
        NewDelivery(
            channel="scripted",
            recipient=f"mix-{n}",
            idempotency_key=f"{side}{way}{n}",
            max_attempts=worker_app.RETRY.max_attempts,
        )
        for way in "qo"
    )
    app.engine.notify_many([queued])
    app.engine.store.create(left, now=datetime.now(UTC))


def test_two_namespaces_working_side_by_side_cross_nothing(apps: list[App]) -> None:
    n = ROUNDS
    for round_ in range(n):
        for app, side in zip(apps, "ab", strict=True):
            _notify(app, side, round_)
        time.sleep(0.25)

    def settled() -> bool:
        return not any(
            status in LIVE_STATUSES for app in apps for status, _ in app.engine.store.counts()
        )

    wait_until(settled, timeout=SETTLE_TIMEOUT, what="both applications' deliveries to end")
    for app in apps:
        deliveries = {d.id: d for d in app.engine.store.find(limit=100_000)}
        assert 2 * n == len(deliveries)  # two a round: one queued, one relayed
        calls = Counter(str(call["delivery"]) for call in app.call_log())
        assert set(calls) <= {str(i) for i in deliveries}, "a worker called another app's"
        for delivery in deliveries.values():
            status, reason, attempts = worker_app.EXPECTED[int(delivery.recipient[4:]) % 5]
            assert (status, reason, attempts) == (
                delivery.status.value,
                delivery.reason,
                delivery.attempt_count,
            ), delivery
            assert attempts == calls[str(delivery.id)], delivery
