"""Real ``dramatiq`` worker processes: a mixed load, SIGKILLed workers, a poison delivery.

The workers run ``worker_app.py`` (copied to a temporary directory) against
the test session's PostgreSQL ledger; the test process notifies, watches the
ledger and the channel's call log, and kills worker processes.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from chimeway_core import DeliveryStatus
from chimeway_core.store import SQLStore
from tests.backends import _workers as shared
from tests.backends._workers import (
    APP_MODULE,
    MAX_ATTEMPTS,
    specs,
    stop,
    wait_all_terminal,
    wait_until,
)
from tests.backends.dramatiq.conftest import Broker
from tests.backends.dramatiq.workers import WorkerSetup, dramatiq_workers, make_setup, supervised

pytestmark = pytest.mark.slow

#: How many worker processes the kill test SIGKILLs per broker.
KILLS = 20


@pytest.fixture
def work(broker: Broker, tmp_path: Path, postgres_database: str) -> Iterator[WorkerSetup]:
    """The worker app in ``tmp_path`` on ``broker`` and the session's database."""
    made = make_setup(broker, tmp_path, postgres_database)
    yield made
    made.close()


def test_two_hundred_mixed_deliveries_end_with_their_scripted_status(
    broker: Broker, work: WorkerSetup, pg_store: SQLStore, postgres_engine: Engine
) -> None:
    """200 deliveries of five scripted kinds end terminal with the expected attempts and calls."""
    producer = work.producer(postgres_engine)
    with dramatiq_workers(work, processes=2, threads=2):
        deliveries = producer.notify_many(specs(shared.mixed_kinds(200)))
        wait_all_terminal(pg_store, timeout=600)
    shared.assert_mixed_ends(deliveries, pg_store, work.calls())


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
    started = time.monotonic()
    with supervised(work, processes=2, threads=1) as exits:
        deliveries = producer.notify_many(specs(kinds))
        killed = shared.kill_mid_call(pg_store, deliveries, work.markers, timeout=900)
    took = time.monotonic() - started
    print(
        f"\n{broker.name}: {len(killed)} workers SIGKILLed mid-call in {took:.1f} s, "
        f"dramatiq started again {len(exits)} times"
    )
    assert KILLS == len(killed)
    shared.assert_kills_lost_nothing(producer, deliveries, work.calls(), work.markers)


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
    process = work.start(command)
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
