"""Real ``celery worker`` processes: a mixed load, SIGKILLed pool children, redelivery, pickle.

The worker runs ``worker_app.py`` (copied to a temporary directory) against
the test session's PostgreSQL ledger; the test process notifies, watches the
ledger and the channel's call log, and kills pool processes.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest
from kombu import Connection, Producer
from sqlalchemy import Engine

from chimeway_core import DeliveryStatus, Outcome
from chimeway_core.jobs import job_id_for
from chimeway_core.store import SQLStore
from tests.backends import _workers as shared
from tests.backends._workers import MAX_ATTEMPTS, specs, wait_all_terminal, wait_until
from tests.backends.celery.conftest import Broker
from tests.backends.celery.workers import celery_worker, make_setup

pytestmark = pytest.mark.slow

#: How many pool children the kill test SIGKILLs per broker.
KILLS = 20


@pytest.mark.parametrize(("pool", "concurrency"), [("prefork", 2), ("solo", 1)])
def test_two_hundred_mixed_deliveries_end_terminal(
    broker: Broker,
    pg_store: SQLStore,
    postgres_database: str,
    postgres_engine: Engine,
    tmp_path: Path,
    pool: str,
    concurrency: int,
) -> None:
    """200 deliveries of five scripted kinds end terminal with the expected attempts and calls."""
    setup = make_setup(broker, tmp_path, postgres_database)
    producer = setup.producer(postgres_engine)
    with celery_worker(setup, pool=pool, concurrency=concurrency):
        deliveries = producer.notify_many(specs(shared.mixed_kinds(200)))
        wait_all_terminal(pg_store, timeout=600)
    shared.assert_mixed_ends(deliveries, pg_store, setup.calls())


def test_sigkilled_pool_children_lose_nothing_and_never_send_twice(
    broker: Broker,
    pg_store: SQLStore,
    postgres_database: str,
    postgres_engine: Engine,
    tmp_path: Path,
) -> None:
    """SIGKILL the pool child mid-call, KILLS times: all terminal, one success each, one key."""
    setup = make_setup(broker, tmp_path, postgres_database)
    producer = setup.producer(postgres_engine)
    kinds = ["killonce"] * KILLS + ["killalways"] + ["ok"] * 10
    started = time.monotonic()
    with celery_worker(setup, pool="prefork", concurrency=2):
        deliveries = producer.notify_many(specs(kinds))
        killed = shared.kill_mid_call(pg_store, deliveries, setup.markers, timeout=600)
    took = time.monotonic() - started
    print(f"\n{broker.name}: {len(killed)} pool children SIGKILLed mid-call in {took:.1f} s")
    assert KILLS == len(killed)
    shared.assert_kills_lost_nothing(producer, deliveries, setup.calls(), setup.markers)


def test_redelivered_task_while_running_makes_one_call(
    pg_store: SQLStore, postgres_database: str, postgres_engine: Engine, tmp_path: Path
) -> None:
    """Redis redelivers a running task after a 1 s visibility timeout: one call, one success."""
    from tests.backends.celery.conftest import cleanup_broker, make_broker
    from tests.services import require

    require("redis")
    broker = make_broker("redis")
    try:
        setup = make_setup(
            broker,
            tmp_path,
            postgres_database,
            visibility_timeout=1,
            unacked_restore_interval=0.25,
            unacked_restore_throttle=1,
        )
        producer = setup.producer(postgres_engine)
        # The call (3 s, the channel's timeout) stays inside its 4 s lease and outlasts
        # the 1 s visibility timeout: the redelivery arrives while it runs.
        with celery_worker(setup, pool="prefork", concurrency=2, CHIMEWAY_TEST_SLOW="3"):
            delivery = producer.notify("scripted", "slow-1", max_attempts=MAX_ATTEMPTS)
            job = job_id_for(delivery.id)
            wait_until(
                lambda: setup.log.read_text().count(f"[{job}] received") >= 2,
                what="the running task to be redelivered",
            )
            wait_all_terminal(pg_store)
        history = producer.get(delivery.id)
        assert (DeliveryStatus.SUCCEEDED, [Outcome.SUCCEEDED]) == (
            history.delivery.status,
            [attempt.outcome for attempt in history.attempts],
        )
        assert 1 == len(setup.calls())
    finally:
        cleanup_broker(broker)


class Canary:
    """Unpickling this creates the file at ``path``: proof that pickle ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        """Rebuild as ``open(path, "w")``, which creates the file."""
        return (open, (self.path, "w"))


def test_pickle_message_is_refused_and_tampered_arguments_make_no_call(
    broker: Broker,
    pg_store: SQLStore,
    postgres_database: str,
    postgres_engine: Engine,
    tmp_path: Path,
) -> None:
    """A pickle message never runs (no canary file); non-id arguments make no channel call."""
    setup = make_setup(broker, tmp_path, postgres_database)
    producer = setup.producer(postgres_engine)
    canary = tmp_path / "canary"
    app = producer.backend.app  # type: ignore[attr-defined]
    with celery_worker(setup, pool="solo", concurrency=1):
        pickled_id = "chimeway-pickle-canary"
        headers, *_ = app.amqp.as_task_v2(pickled_id, "chimeway.deliver", args=(), kwargs={})
        queue = app.amqp.queues[broker.queue]
        with Connection(broker.url, transport_options=setup.transport_options) as connection:
            Producer(connection).publish(
                ((Canary(str(canary)),), {}, {}),
                serializer="pickle",
                exchange=queue.exchange,
                routing_key=queue.routing_key,
                headers=headers,
                declare=[queue],
            )
        # Written without a job: the tampered jobs below name a live, due delivery.
        target = producer.store.create(specs(["ok"])[0], now=producer.clock.now()).delivery
        for args, kwargs in [
            (["not-a-uuid"], {}),
            ([target.id.hex], {}),
            ([str(target.id), "extra"], {}),
            ([str(target.id)], {"extra": 1}),
        ]:
            app.send_task("chimeway.deliver", args=args, kwargs=kwargs, queue=broker.queue)
        producer.backend.enqueue(target.id)
        witness = producer.notify("scripted", "ok-witness", max_attempts=MAX_ATTEMPTS)
        wait_all_terminal(pg_store)
        wait_until(
            lambda: setup.log.read_text().count("InvalidJobError") >= 4,
            what="the four tampered jobs to fail",
        )
    log = setup.log.read_text()
    assert not canary.exists()
    assert "ContentDisallowed" in log or "Refusing to deserialize" in log, log[-3000:]
    assert [target.id, witness.id] == [call.delivery_id for call in setup.calls()]
    assert DeliveryStatus.SUCCEEDED == producer.get(target.id).delivery.status


def test_run_worker_serves_the_queue_and_stops_warm_on_sigterm(
    pg_store: SQLStore, postgres_database: str, postgres_engine: Engine, tmp_path: Path
) -> None:
    """run_worker (what ``chimeway worker --backend celery`` calls) delivers, then exits 0."""
    from tests.backends.celery.conftest import cleanup_broker, make_broker
    from tests.services import require

    require("redis")
    broker = make_broker("redis")
    script = (
        "from chimeway_backends.celery import run_worker; "
        "raise SystemExit(run_worker('chimeway_worker_app:engine', pool='solo', "
        "concurrency=1, loglevel='INFO', rescue_interval=1.0))"
    )
    try:
        setup = make_setup(broker, tmp_path, postgres_database)
        producer = setup.producer(postgres_engine)
        command = [sys.executable, "-c", script]
        with celery_worker(setup, pool="solo", concurrency=1, command=command) as process:
            delivery = producer.notify("scripted", "temp2-1", max_attempts=MAX_ATTEMPTS)
            wait_all_terminal(pg_store)
            process.send_signal(signal.SIGTERM)
            assert 0 == process.wait(timeout=30)
        assert (DeliveryStatus.SUCCEEDED, 3) == (
            producer.get(delivery.id).delivery.status,
            len(setup.calls()),
        )
    finally:
        cleanup_broker(broker)
