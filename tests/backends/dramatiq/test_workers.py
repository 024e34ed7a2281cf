"""Real ``dramatiq`` worker processes: a mixed load, SIGKILLed workers, a poison delivery.

The workers run ``worker_app.py`` (copied to a temporary directory) against
the test session's PostgreSQL ledger; the test process notifies, watches the
ledger and the channel's call log, and kills worker processes.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from chimeway_core import DeliveryStatus, NewDelivery, Outcome
from chimeway_core.store import SQLStore
from tests.backends.dramatiq.conftest import Broker, wait_until
from tests.backends.dramatiq.workers import (
    APP_MODULE,
    MAX_ATTEMPTS,
    WorkerSetup,
    dramatiq_workers,
    make_setup,
    start,
    stop,
    supervised,
    wait_all_terminal,
)

pytestmark = pytest.mark.slow

#: recipient prefix -> (status, reason, attempts) every such delivery must end with.
EXPECTED = {
    "ok": (DeliveryStatus.SUCCEEDED, None, 1),
    "temp2": (DeliveryStatus.SUCCEEDED, None, 3),
    "perm": (DeliveryStatus.CANCELLED, "permanent_failure", 1),
    "bounce": (DeliveryStatus.CANCELLED, "bounced", 1),
    "exhaust": (DeliveryStatus.CANCELLED, "retries_exhausted", MAX_ATTEMPTS),
}

#: How many worker processes the kill test SIGKILLs per broker.
KILLS = 20


@pytest.fixture
def work(broker: Broker, tmp_path: Path, postgres_database: str) -> Iterator[WorkerSetup]:
    """The worker app in ``tmp_path`` on ``broker`` and the session's database."""
    made = make_setup(broker, tmp_path, postgres_database)
    yield made
    made.close()


def _specs(kinds: list[str]) -> list[NewDelivery]:
    return [
        NewDelivery(
            channel="scripted",
            recipient=f"{kind}-{n}",
            payload={"n": n},
            notification_key="test",
            max_attempts=MAX_ATTEMPTS,
        )
        for n, kind in enumerate(kinds)
    ]


def test_two_hundred_mixed_deliveries_end_with_their_scripted_status(
    broker: Broker, work: WorkerSetup, pg_store: SQLStore, postgres_engine: Engine
) -> None:
    """200 deliveries of five scripted kinds end terminal with the expected attempts and calls."""
    producer = work.producer(postgres_engine)
    kinds = [list(EXPECTED)[n % len(EXPECTED)] for n in range(200)]
    with dramatiq_workers(work, processes=2, threads=2):
        deliveries = producer.notify_many(_specs(kinds))
        wait_all_terminal(pg_store, timeout=180)
    calls = collections.Counter(call.delivery_id for call in work.calls())
    actual: collections.Counter[tuple[object, ...]] = collections.Counter()
    for delivery in deliveries:
        after = pg_store.get(delivery.id)
        assert after is not None
        kind = delivery.recipient.split("-", 1)[0]
        actual[(kind, after.status, after.reason, after.attempt_count, calls[delivery.id])] += 1
    expected = collections.Counter(
        {(kind, *shape, shape[2]): 40 for kind, shape in EXPECTED.items()}
    )
    assert expected == actual


def _markers(directory: Path) -> list[tuple[str, int, int]]:
    if not directory.exists():
        return []
    found = []
    for path in directory.iterdir():
        delivery_id, attempt, pid = path.name.split(".")
        found.append((delivery_id, int(attempt), int(pid)))
    return found


def test_sigkilled_workers_lose_nothing_and_never_send_twice(
    broker: Broker, work: WorkerSetup, pg_store: SQLStore, postgres_engine: Engine
) -> None:
    """SIGKILL the worker process mid-call, KILLS times; a poison delivery dies MAX_ATTEMPTS times.

    Every delivery ends terminal with one idempotency key across all its
    calls and at most one success; each killed one is unknown, then sent;
    the one that kills its worker every time is cancelled after exactly
    MAX_ATTEMPTS deaths. A supervisor starts ``dramatiq`` again after each.
    """
    producer = work.producer(postgres_engine)
    kinds = ["killonce"] * KILLS + ["killalways"] + ["ok"] * 10
    killed: set[tuple[str, int, int]] = set()
    started = time.monotonic()
    with supervised(work, processes=2, threads=1) as exits:
        deliveries = producer.notify_many(_specs(kinds))
        by_id = {str(d.id): d.recipient.split("-", 1)[0] for d in deliveries}
        deadline = time.monotonic() + 400
        while pg_store.oldest_non_terminal() is not None:
            assert time.monotonic() < deadline, f"not terminal after 400 s; killed {len(killed)}"
            for marker in _markers(work.markers):
                delivery_id, attempt, pid = marker
                if marker in killed or by_id[delivery_id] != "killonce" or attempt != 1:
                    continue
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                killed.add(marker)
            time.sleep(0.05)
    took = time.monotonic() - started
    print(
        f"\n{broker.name}: {len(killed)} workers SIGKILLed mid-call in {took:.1f} s, "
        f"dramatiq started again {len(exits)} times"
    )
    assert KILLS == len(killed)
    calls = work.calls()
    for delivery in deliveries:
        history = producer.get(delivery.id)
        kind = by_id[str(delivery.id)]
        outcomes = [attempt.outcome for attempt in history.attempts]
        keys = {call.idempotency_key for call in calls if call.delivery_id == delivery.id}
        assert {delivery.idempotency_key} == keys
        assert outcomes.count(Outcome.SUCCEEDED) <= 1
        if kind == "killonce":
            assert (DeliveryStatus.SUCCEEDED, [Outcome.UNKNOWN, Outcome.SUCCEEDED]) == (
                history.delivery.status,
                outcomes,
            )
        elif kind == "killalways":
            deaths = [m for m in _markers(work.markers) if m[0] == str(delivery.id)]
            assert (DeliveryStatus.CANCELLED, "retries_exhausted", MAX_ATTEMPTS) == (
                history.delivery.status,
                history.delivery.reason,
                len(deaths),
            )
        else:
            assert [Outcome.SUCCEEDED] == outcomes


def test_chimeway_worker_backend_dramatiq_serves_the_queue_and_stops_on_sigterm(
    broker: Broker, work: WorkerSetup, pg_store: SQLStore, postgres_engine: Engine
) -> None:
    """``chimeway worker --backend dramatiq --app`` delivers with retries, then exits 0."""
    producer = work.producer(postgres_engine)
    command = [
        sys.executable,
        "-m",
        "chimeway_core",
        "worker",
        "--backend",
        "dramatiq",
        "--app",
        f"{APP_MODULE}:engine",
        "--concurrency",
        "2",
        "--tick-interval",
        "1",
    ]
    process = start(work, command)
    try:
        wait_until(
            lambda: "Ctrl-C or SIGTERM stops" in work.log.read_text() or process.poll() is not None,
            what="the chimeway worker to start",
        )
        delivery = producer.notify("scripted", "temp2-1", max_attempts=MAX_ATTEMPTS)
        wait_all_terminal(pg_store)
        process.send_signal(signal.SIGTERM)
        assert 0 == process.wait(timeout=60), work.log.read_text()[-3000:]
    finally:
        stop(process)
    assert (DeliveryStatus.SUCCEEDED, 3) == (
        producer.get(delivery.id).delivery.status,
        len(work.calls()),
    )
    assert "chimeway worker: stopped" in work.log.read_text()
