"""Routes: each channel's jobs go to the queue its route names, however they are queued."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from uuid import UUID

import pytest

from chimeway_backends.memory import DEFAULT_QUEUE, MemoryBackend
from chimeway_core import VirtualClock
from chimeway_core.engine import Chimeway
from chimeway_core.errors import UnhandledOutcomeError
from chimeway_core.jobs import JobKind
from chimeway_core.records import NewDelivery
from chimeway_core.states import DeliveryStatus
from chimeway_core.store import SQLStore
from chimeway_core.testing.fakes import ScriptedChannel, script_for
from tests.engine.conftest import MakeEngine

ROUTES = {"sms": "sms", "push": "bulk"}


def _channels() -> dict[str, ScriptedChannel]:
    return {name: ScriptedChannel() for name in ("email", "sms", "push")}


def _queues(backend: MemoryBackend) -> dict[UUID, str]:
    return {job.delivery_id: job.queue for job in backend.pending()}


def test_every_way_of_queueing_follows_the_channel_route(
    make_engine: MakeEngine, backend: MemoryBackend, clock: VirtualClock
) -> None:
    """notify, notify_many and a scheduled notify queue on the route; the rest on the default."""
    engine = make_engine(_channels(), routes=ROUTES)
    email = engine.notify("email", script_for("sent")).id
    sms = engine.notify("sms", script_for("sent")).id
    later = engine.notify(
        "sms", script_for("sent"), scheduled_at=clock.now() + timedelta(hours=1)
    ).id
    specs = [NewDelivery(channel=c, recipient=script_for("sent", tag=c)) for c in _channels()]
    many = [delivery.id for delivery in engine.notify_many(specs)]
    assert {
        email: DEFAULT_QUEUE,
        sms: "sms",
        later: "sms",
        many[0]: DEFAULT_QUEUE,
        many[1]: "sms",
        many[2]: "bulk",
    } == _queues(backend)
    assert (("bulk", "sms"), "sms", None) == (
        engine.queues,
        engine.queue_for("sms"),
        engine.queue_for("email"),
    )
    assert ["default", "bulk", "sms"] == engine.worker_queues("default")
    assert ["sms", "bulk"] == engine.worker_queues("sms")  # a backend's queue may be routed to


def test_a_worker_of_one_queue_leaves_the_others_waiting(
    make_engine: MakeEngine, backend: MemoryBackend, store: SQLStore
) -> None:
    """The isolation routes are for: a slow or bulky channel's queue does not hold up another."""
    engine = make_engine(_channels(), routes=ROUTES)
    ids = {channel: engine.notify(channel, script_for("sent")).id for channel in ROUTES}
    email = engine.notify("email", script_for("sent")).id
    backend.run_until_idle(engine, queues=[DEFAULT_QUEUE], fail_fast=True)
    assert DeliveryStatus.SUCCEEDED is _status(store, email)
    assert {ids["sms"]: "sms", ids["push"]: "bulk"} == _queues(backend)
    backend.run_until_idle(engine, queues=["bulk", "sms"], fail_fast=True)
    assert {DeliveryStatus.SUCCEEDED} == {_status(store, i) for i in ids.values()}


def test_retries_and_deferrals_stay_on_the_route(
    make_engine: MakeEngine, backend: MemoryBackend, store: SQLStore
) -> None:
    """A retry's JobResult names the route's queue, and the backend queues the next run there."""
    engine = make_engine(_channels(), routes=ROUTES)
    delivery_id = engine.notify("sms", script_for("temporary", "sent")).id
    backend.run_due(engine, queues=["sms"], fail_fast=True)
    assert {delivery_id: "sms"} == _queues(backend)
    result = engine.perform(delivery_id)  # not due yet: deferred to its retry time
    assert (JobKind.DEFER, "sms") == (result.kind, result.queue)
    backend.run_until_idle(engine, queues=["sms"], fail_fast=True)
    assert DeliveryStatus.SUCCEEDED is _status(store, delivery_id)
    unrouted = engine.notify("email", script_for("temporary", "sent")).id
    backend.run_due(engine, fail_fast=True)
    assert {unrouted: DEFAULT_QUEUE} == _queues(backend)


def test_an_unhandled_outcome_names_the_route_of_its_next_run(
    make_engine: MakeEngine, backend: MemoryBackend
) -> None:
    """UnhandledOutcomeError carries the queue, and the memory backend requeues there."""
    engine = make_engine(_channels(), routes=ROUTES)
    delivery_id = engine.notify("push", script_for("weird", "sent")).id
    with pytest.raises(UnhandledOutcomeError) as raised:
        backend.run_due(engine, queues=["bulk"], fail_fast=True)
    assert raised.value.queue == "bulk"
    assert {delivery_id: "bulk"} == _queues(backend)


def test_the_relay_and_the_rescuer_queue_on_the_route(store: SQLStore, clock: VirtualClock) -> None:
    """Rows a dead process left, and deliveries a lost queue held, come back on their routes."""
    notifier = Chimeway(store, MemoryBackend(clock), _channels(), routes=ROUTES, clock=clock)
    ids = {channel: notifier.notify(channel, script_for("sent")).id for channel in ROUTES}
    email = notifier.notify("email", script_for("sent")).id
    # The notifying process died before clearing its outbox rows, its queue lost with it.
    fresh = MemoryBackend(clock)
    engine = Chimeway(store, fresh, _channels(), routes=ROUTES, clock=clock)
    clock.advance(60)
    assert 3 == engine.relay()
    expected = {ids["sms"]: "sms", ids["push"]: "bulk", email: DEFAULT_QUEUE}
    assert expected == _queues(fresh)
    rescued = MemoryBackend(clock)
    engine.backend = rescued
    clock.advance(engine.requeue_after.total_seconds())
    assert 3 == engine.rescue().requeued
    assert expected == _queues(rescued)


def test_a_resend_is_queued_on_the_route(
    make_engine: MakeEngine, backend: MemoryBackend, store: SQLStore
) -> None:
    """The copy of a cancelled delivery goes where its channel's jobs go."""
    engine = make_engine(_channels(), routes=ROUTES)
    original = engine.notify("push", script_for("permanent", "sent")).id
    backend.run_until_idle(engine, fail_fast=True)
    assert DeliveryStatus.CANCELLED is _status(store, original)
    copy = engine.resend(original).copy.id
    assert {copy: "bulk"} == _queues(backend)


class _OneQueue:
    """A backend whose enqueue methods know no ``queue``: it cannot follow routes."""

    def enqueue(self, delivery_id: UUID, *, at: datetime | None = None) -> None:
        """Nothing: never called here."""

    def enqueue_many(self, delivery_ids: Sequence[UUID]) -> None:
        """Nothing: never called here."""


@pytest.mark.parametrize(
    ("routes", "error", "message"),
    [
        ({"fax": "slow"}, ValueError, "routes names channels this engine does not have: ['fax']"),
        ({"sms": ""}, ValueError, "routes['sms'] must be a non-empty queue name"),
        ({"sms": 3}, TypeError, "routes['sms'] must be a queue name, not int"),
        ([("sms", "sms")], TypeError, "routes must be a mapping of channel names to queue names"),
    ],
)
def test_routes_are_checked_when_the_engine_is_built(
    make_engine: MakeEngine, routes: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as raised:
        make_engine(_channels(), routes=routes)
    assert str(raised.value).startswith(message)


def test_routes_need_a_backend_that_takes_a_queue(store: SQLStore) -> None:
    """Refused when built, not when a routed delivery is first queued; without routes it is fine."""
    with pytest.raises(TypeError, match=r"routes need a backend whose enqueue\(\) and"):
        Chimeway(store, _OneQueue(), _channels(), routes=ROUTES)
    engine = Chimeway(store, _OneQueue(), _channels())
    assert {} == dict(engine.routes)
    with pytest.raises(AttributeError, match="fixed when the engine is built"):
        engine.routes = ROUTES  # type: ignore[misc]


def _status(store: SQLStore, delivery_id: UUID) -> DeliveryStatus:
    delivery = store.get(delivery_id)
    assert delivery is not None
    return delivery.status
