"""DramatiqBackend: message shape, verdicts in Dramatiq's idiom, refusals, guards.

Every test runs a real :class:`dramatiq.Worker` (threads of this process)
on a real broker, Redis and RabbitMQ in turn, the ledger on PostgreSQL. A
watching middleware counts what the worker processed and what Dramatiq's
Retries middleware re-enqueued.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware, TimeLimitExceeded

from chimeway_backends.dramatiq import ACTOR_NAME, DramatiqBackend
from chimeway_backends.dramatiq.harness import worker_for
from chimeway_core import (
    BackendUnavailableError,
    DeliveryStatus,
    NewDelivery,
    RetryPolicy,
    Sent,
    TemporaryFailure,
)
from chimeway_core.backend import Enqueued
from chimeway_core.engine import Chimeway
from chimeway_core.errors import InvalidJobError
from chimeway_core.jobs import job_id_for
from chimeway_core.policies import PolicyContext, PolicyDecision, Proceed
from chimeway_core.records import Delivery
from chimeway_core.store import SQLStore
from chimeway_core.testing import FakeChannel
from tests.backends._checks import Routed, assert_import_names_the_extra
from tests.backends._workers import wait_until
from tests.backends.dramatiq.conftest import Broker, cleanup_broker

#: 0.2 s, doubling, no jitter, three attempts.
RETRY = RetryPolicy(max_attempts=3, initial_delay=0.2, backoff_factor=2.0, jitter=0.0, max_delay=5)


class Watch(Middleware):
    """Records every message the worker processed (its exception) and every Dramatiq retry."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.processed: list[type[BaseException] | None] = []
        self.retried = 0
        self.sent: list[dramatiq.Message[Any]] = []

    def after_enqueue(self, broker: dramatiq.Broker, message: Any, delay: int | None) -> None:
        """Count Dramatiq's own retries: delayed, with the ``retries`` the Retries middleware sets.

        (A delayed message comes back from the delay queue through another,
        undelayed, enqueue: not counted twice.)
        """
        del broker
        with self.lock:
            self.sent.append(message)
            if delay is not None and message.options.get("retries"):
                self.retried += 1

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,
        *,
        result: object = None,
        exception: BaseException | None = None,
    ) -> None:
        """Record what the actor ended with."""
        del broker, message, result
        with self.lock:
            self.processed.append(None if exception is None else type(exception))


class InProcess:
    """A broker of a test's own with a Watch, a backend on it, and an engine made on demand."""

    def __init__(self, broker: Broker, store: SQLStore) -> None:
        self.spec = broker
        self.store = store
        self.broker = broker.make()
        self.watch = Watch()
        self.broker.add_middleware(self.watch)
        self.backend_options: dict[str, Any] = {"rescue_interval": None}

    def make_engine(self, channels: dict[str, Any], **options: Any) -> Chimeway:
        """An engine on a new DramatiqBackend of this broker, bound to it."""
        backend = DramatiqBackend(self.broker, queue=self.spec.queue, **self.backend_options)
        engine = Chimeway(self.store, backend, channels, **options)
        backend.bind(engine)
        return engine


@pytest.fixture
def in_process(broker: Broker, pg_store: SQLStore) -> Iterator[InProcess]:
    """An :class:`InProcess` on each broker in turn."""
    made = InProcess(broker, pg_store)
    yield made
    made.broker.close()


def test_import_without_dramatiq_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing the adapter without dramatiq raises MissingExtraError with the install command."""
    assert_import_names_the_extra(monkeypatch, "chimeway_backends.dramatiq", "dramatiq", "dramatiq")


def test_guards_and_one_backend_per_broker() -> None:
    """A non-broker, an empty queue, a bad interval and a second backend are refused."""
    broker = RedisBroker(url="redis://127.0.0.1:1/2")  # type: ignore[no-untyped-call]
    with pytest.raises(TypeError, match=r"dramatiq\.Broker"):
        DramatiqBackend(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty"):
        DramatiqBackend(broker, queue="")
    with pytest.raises(ValueError, match="rescue_interval"):
        DramatiqBackend(broker, rescue_interval=0)
    with pytest.raises(ValueError, match="time_limit"):
        DramatiqBackend(broker, time_limit=-1)
    backend = DramatiqBackend(broker)
    with pytest.raises(ValueError, match="one per broker"):
        DramatiqBackend(broker)
    assert (
        "dramatiq",
        "chimeway",
        (TimeLimitExceeded,),
        {"retry_when", "max_retries"},
    ) == (backend.name, backend.default_queue, backend.interrupts, set(backend.actor.options))


def test_an_unreachable_broker_is_backend_unavailable() -> None:
    """Enqueue and ping on a broker that does not answer raise BackendUnavailableError."""
    backend = DramatiqBackend(RedisBroker(url="redis://127.0.0.1:1/2"))  # type: ignore[no-untyped-call]
    where = r"the Dramatiq RedisBroker at redis://127\.0\.0\.1:1/2"
    with pytest.raises(BackendUnavailableError, match=where):
        backend.enqueue(uuid.uuid4())
    with pytest.raises(BackendUnavailableError, match=where):
        backend.ping()


def test_the_message_is_json_with_the_id_only_under_the_delivery_job_id(
    in_process: InProcess,
) -> None:
    """One argument, the canonical id; the message id is job_id_for; a future job is delayed."""
    engine = in_process.make_engine({"sms": FakeChannel()})
    delivery_id = uuid.uuid4()
    later = datetime.now(UTC) + timedelta(hours=1)
    outcomes = [
        engine.backend.enqueue(delivery_id),
        engine.backend.enqueue(delivery_id, at=later),
    ]
    now, delayed = in_process.watch.sent
    assert (
        [Enqueued.QUEUED, Enqueued.SCHEDULED],
        (ACTOR_NAME, (str(delivery_id),), {}, job_id_for(delivery_id)),
        in_process.spec.queue,
        f"{in_process.spec.queue}.DQ",
        True,
    ) == (
        outcomes,
        (now.actor_name, now.args, now.kwargs, now.message_id),
        now.queue_name,
        delayed.queue_name,
        abs(delayed.options["eta"] - later.timestamp() * 1000) < 5_000,
    )
    assert dramatiq.Message.decode(now.encode()).args == (str(delivery_id),)


def test_retry_and_defer_are_delayed_messages_and_dramatiq_adds_no_attempt(
    in_process: InProcess,
) -> None:
    """Temporary failures retry through the delay queue; exhaustion stops at max_attempts."""
    flaky = FakeChannel([TemporaryFailure("busy"), Sent()])
    down = FakeChannel(lambda _d: TemporaryFailure("down"))
    engine = in_process.make_engine({"flaky": flaky, "down": down}, retry=RETRY)
    with worker_for(engine.backend):  # type: ignore[arg-type]
        ok = engine.notify("flaky", "+15550100").id
        lost = engine.notify("down", "+15550101").id
        wait_until(
            lambda: all(engine.get(i).delivery.is_terminal for i in (ok, lost)),
            what="both deliveries to end",
        )
    assert (
        DeliveryStatus.SUCCEEDED,
        2,
        DeliveryStatus.CANCELLED,
        3,
        0,
    ) == (
        engine.get(ok).delivery.status,
        len(flaky.calls),
        engine.get(lost).delivery.status,
        len(down.calls),
        in_process.watch.retried,
    )


def test_foreign_messages_fail_once_without_a_call_or_a_retry(in_process: InProcess) -> None:
    """Messages whose arguments are not exactly one canonical id fail: no call, no retry."""
    channel = FakeChannel()
    engine = in_process.make_engine({"sms": channel}, retry=RETRY)
    live = engine.store.create(
        NewDelivery(channel="sms", recipient="+15550100"), now=engine.clock.now()
    ).delivery
    engine.store.delete_outbox([live.id])
    shapes: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((), {}),
        (("not-a-uuid",), {}),
        ((live.id.hex,), {}),
        ((str(live.id), str(live.id)), {}),
        ((str(live.id),), {"delivery_id": str(live.id)}),
        (({"id": str(live.id)},), {}),
        ((7,), {}),
    ]
    for args, kwargs in shapes:
        # max_retries on the message itself: Dramatiq would obey it without retry_when.
        message = dramatiq.Message(
            queue_name=in_process.spec.queue,
            actor_name=ACTOR_NAME,
            args=args,
            kwargs=kwargs,
            options={"max_retries": 5, "min_backoff": 10, "max_backoff": 10},
        )
        in_process.broker.enqueue(message)
    with worker_for(engine.backend):  # type: ignore[arg-type]
        wait_until(
            lambda: len(in_process.watch.processed) >= len(shapes), what="every message to run"
        )
        time.sleep(0.5)  # a retry, were there one, would be back by now (10 ms backoff)
    assert ([InvalidJobError] * len(shapes), 0, [], DeliveryStatus.READY) == (
        in_process.watch.processed,
        in_process.watch.retried,
        channel.calls,
        engine.get(live.id).delivery.status,
    )


class FailsOnce:
    """A policy that raises the first time it is evaluated in the worker."""

    name = "fails_once"

    def __init__(self) -> None:
        self.raised = False

    def evaluate(self, delivery: Delivery, context: PolicyContext) -> PolicyDecision:
        """Raise once, then proceed."""
        del delivery
        if context.phase.value == "perform" and not self.raised:
            self.raised = True
            raise RuntimeError("policy backend unavailable")
        return Proceed()


def test_a_crash_in_perform_is_a_dramatiq_retry_after_the_error_delay(
    in_process: InProcess,
) -> None:
    """perform() raising something unexpected is retried by Dramatiq once, and the delivery sent."""
    channel = FakeChannel()
    in_process.backend_options["error_retry_delay"] = 0.2
    engine = in_process.make_engine({"sms": channel}, retry=RETRY, policies=(FailsOnce(),))
    with worker_for(engine.backend):  # type: ignore[arg-type]
        delivery = engine.notify("sms", "+15550100").id
        wait_until(lambda: engine.get(delivery).delivery.is_terminal, what="the delivery")
    assert (DeliveryStatus.SUCCEEDED, 1, 1, [dramatiq.Retry, None]) == (
        engine.get(delivery).delivery.status,
        len(channel.calls),
        in_process.watch.retried,
        in_process.watch.processed,
    )


def test_a_time_limit_leaves_the_attempt_in_flight_for_the_rescuer(
    in_process: InProcess,
) -> None:
    """TimeLimitExceeded mid-call: no outcome, no Dramatiq retry; the rescuer resolves it."""

    def slow_once(delivery: Delivery) -> object:
        if delivery.attempt_count == 1:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # short sleeps: the interrupt lands between them
                time.sleep(0.01)
        return Sent()

    channel = FakeChannel(slow_once, timeout=1.0)
    in_process.backend_options["time_limit"] = 0.3
    engine = in_process.make_engine({"sms": channel}, retry=RETRY, lease_margin=0.5)
    with worker_for(engine.backend):  # type: ignore[arg-type]
        delivery = engine.notify("sms", "+15550100").id
        wait_until(lambda: in_process.watch.processed != [], what="the cut-off call")
        in_flight = [attempt.outcome for attempt in engine.get(delivery).attempts]
        wait_until(lambda: engine.rescue().resolved == 1, what="the lease to lapse")
        wait_until(lambda: engine.get(delivery).delivery.is_terminal, what="the second attempt")
    outcomes = [a.outcome.value if a.outcome else None for a in engine.get(delivery).attempts]
    assert (
        [None],
        [TimeLimitExceeded, None],
        0,
        ["unknown", "succeeded"],
    ) == (in_flight, in_process.watch.processed, in_process.watch.retried, outcomes)


def test_the_middleware_runs_the_rescuer_in_the_worker(
    in_process: InProcess, pg_store: SQLStore
) -> None:
    """A worker with rescue_interval resolves a dead worker's attempt on its own."""
    channel = FakeChannel(timeout=0.2)
    in_process.backend_options["rescue_interval"] = 0.2
    engine = in_process.make_engine({"sms": channel}, retry=RETRY, lease_margin=0.1)
    created = pg_store.create(
        NewDelivery(channel="sms", recipient="+15550100"), now=engine.clock.now()
    ).delivery
    pg_store.delete_outbox([created.id])
    claim = pg_store.claim(created.id, owner="dead", lease_seconds=0.3, now=engine.clock.now())
    assert claim is not None
    with worker_for(engine.backend):  # type: ignore[arg-type]
        wait_until(lambda: engine.get(created.id).delivery.is_terminal, what="the rescue")
    outcomes = [a.outcome.value if a.outcome else None for a in engine.get(created.id).attempts]
    assert (DeliveryStatus.SUCCEEDED, ["unknown", "succeeded"]) == (
        engine.get(created.id).delivery.status,
        outcomes,
    )


def test_a_routed_channel_runs_and_retries_on_its_own_queue(
    broker: Broker, pg_store: SQLStore
) -> None:
    """A worker of the routed queue alone runs the sms delivery, its retry too; email waits."""
    routed_broker = Broker(broker.name, broker.url, f"{broker.queue}_sms")
    made = broker.make()
    backend = DramatiqBackend(made, queue=broker.queue, rescue_interval=None)
    routed = Routed(pg_store, backend, routed_broker.queue, RETRY)
    try:
        made.declare_queue(routed.queue)
        sms_only = dramatiq.Worker(made, queues={routed.queue}, worker_threads=1)
        sms_only.start()
        try:
            sms, email = routed.notify_both()
            wait_until(
                lambda: routed.status(sms) is DeliveryStatus.SUCCEEDED, what="the sms delivery"
            )
        finally:
            sms_only.stop(timeout=30_000)
        assert (2, 0, DeliveryStatus.READY) == routed.only_sms_ran(email)
    finally:
        made.close()
        if broker.name == "rabbitmq":
            cleanup_broker(routed_broker)
