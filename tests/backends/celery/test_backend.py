"""CeleryBackend: message shape, result translation in Celery's idiom, guards, configuration."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from celery import Celery
from kombu import Connection

from chimeway_backends.celery import (
    TASK_NAME,
    CeleryBackend,
    CeleryConfigurationWarning,
    check_configuration,
    warn_configuration,
)
from chimeway_core import (
    DeliveryStatus,
    NewDelivery,
    RetryPolicy,
    Sent,
    TemporaryFailure,
    UnhandledOutcomeError,
)
from chimeway_core.engine import Chimeway
from chimeway_core.errors import EngineNotFoundError, InvalidJobError
from chimeway_core.jobs import Backend, job_id_for
from chimeway_core.loading import load_engine
from chimeway_core.policies import PolicyContext, PolicyDecision, Proceed
from chimeway_core.records import Delivery
from chimeway_core.store import SQLStore
from chimeway_core.testing import FakeChannel
from tests.backends._checks import Routed, assert_import_names_the_extra
from tests.backends.celery.conftest import (
    Broker,
    InProcessCelery,
    JobWatch,
    cleanup_broker,
    make_broker,
    run_watched_until_idle,
    wait_until,
    worker_for,
)

#: 0.2 s, doubling, no jitter, three attempts.
RETRY = RetryPolicy(max_attempts=3, initial_delay=0.2, backoff_factor=2.0, jitter=0.0, max_delay=5)


def test_import_without_celery_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing the adapter without celery raises MissingExtraError with the install command."""
    assert_import_names_the_extra(monkeypatch, "chimeway_backends.celery", "celery", "celery")


def test_satisfies_the_backend_protocol_and_one_backend_per_app() -> None:
    """A CeleryBackend is a Backend; a second backend on the same app is refused."""
    app = Celery("protocol", broker="memory://", set_as_current=False)
    backend = CeleryBackend(app)
    assert isinstance(backend, Backend)
    with pytest.raises(ValueError, match="already has a CeleryBackend"):
        CeleryBackend(app)


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"app": "tasks:app"}, TypeError, "app must be a celery.Celery"),
        ({"queue": ""}, ValueError, "queue must be a non-empty str"),
        ({"queue": None}, ValueError, "queue must be a non-empty str"),
        ({"engine": 3}, TypeError, "engine must be a Chimeway"),
        ({"rescue_interval": 0}, ValueError, "rescue_interval"),
        ({"rescue_interval": float("nan")}, ValueError, "rescue_interval"),
        ({"error_retry_delay": -1}, ValueError, "error_retry_delay"),
        ({"rescue_interval": float("inf")}, ValueError, "rescue_interval"),
        ({"rescue_interval": "30"}, TypeError, "rescue_interval must be a number of seconds"),
        ({"error_retry_delay": "10"}, TypeError, "error_retry_delay must be a number of seconds"),
    ],
)
def test_a_wrong_argument_is_refused_by_name(
    arguments: dict[str, object], error: type[Exception], message: str
) -> None:
    """CeleryBackend names a wrong app, queue, engine or interval, and registers nothing."""
    app = Celery("arguments", broker="memory://", set_as_current=False)
    with pytest.raises(error, match=re.escape(message)):
        CeleryBackend(**{"app": app, **arguments})  # type: ignore[arg-type]
    CeleryBackend(app)  # the refused one did not claim the app


def test_enqueue_refuses_a_naive_time_and_a_non_uuid() -> None:
    """A naive run time and a delivery id that is not a UUID are refused before sending."""
    backend = CeleryBackend(Celery("guards", broker="memory://", set_as_current=False))
    with pytest.raises(ValueError, match="timezone-aware"):
        backend.enqueue(uuid.uuid4(), at=datetime(2030, 1, 1))
    with pytest.raises(TypeError, match="UUID"):
        backend.enqueue(str(uuid.uuid4()))  # type: ignore[arg-type]


@pytest.mark.parametrize("broker_name", ["redis", "rabbitmq"])
def test_job_message_is_json_with_the_id_only_under_the_delivery_job_id(broker_name: str) -> None:
    """On the wire a job is JSON, its only argument the id, its task id job_id_for(id), eta kept."""
    from tests.services import require

    require(broker_name)
    broker = make_broker(broker_name)
    try:
        app = broker.app()
        backend = CeleryBackend(app, queue=broker.queue)
        first, second = uuid.uuid4(), uuid.uuid4()
        later = datetime.now(UTC) + timedelta(hours=1)
        backend.enqueue_many([first])
        backend.enqueue(second, at=later)
        with Connection(broker.url, transport_options=broker.transport_options) as connection:
            queue = connection.SimpleQueue(app.amqp.queues[broker.queue])
            messages = [queue.get(timeout=10) for _ in range(2)]
            for message in messages:
                message.ack()
            queue.close()
        shapes = [
            (
                m.content_type,
                m.headers["task"],
                m.headers["id"],
                m.decode()[0],
                m.decode()[1],
                m.headers["eta"] is not None,
            )
            for m in messages
        ]
        assert [
            ("application/json", TASK_NAME, job_id_for(first), [str(first)], {}, False),
            ("application/json", TASK_NAME, job_id_for(second), [str(second)], {}, True),
        ] == shapes
        assert later == datetime.fromisoformat(messages[1].headers["eta"])
    finally:
        from tests.backends.celery.conftest import cleanup_broker

        cleanup_broker(broker)


def test_retry_and_defer_are_celery_retries(
    in_process: InProcessCelery, job_watch: JobWatch
) -> None:
    """A temporary failure is a Celery retry, not a failure; the delivery then succeeds."""
    channel = FakeChannel([TemporaryFailure("busy"), Sent()])
    engine = in_process.make_engine({"sms": channel}, retry=RETRY)
    delivery = engine.notify("sms", "+15550100")
    failures = run_watched_until_idle(engine, job_watch)
    assert (DeliveryStatus.SUCCEEDED, [], 1) == (
        engine.get(delivery.id).delivery.status,
        failures,
        job_watch.retries,
    )


def test_unhandled_outcome_fails_the_task_with_its_shape_and_still_converges(
    in_process: InProcessCelery, job_watch: JobWatch
) -> None:
    """An undocumented result: each non-final run is a Celery failure naming the shape."""
    channel = FakeChannel([{"weird": "shape"}])
    engine = in_process.make_engine({"sms": channel}, retry=RETRY)
    delivery = engine.notify("sms", "+15550100")
    failures = run_watched_until_idle(engine, job_watch)
    after = engine.get(delivery.id).delivery
    assert (DeliveryStatus.CANCELLED, "retries_exhausted", 3) == (
        after.status,
        after.reason,
        len(channel.calls),
    )
    assert [UnhandledOutcomeError, UnhandledOutcomeError] == [type(f) for f in failures]
    assert "outcome='failed' error_class='unknown_classification'" in str(failures[0])
    assert f"delivery_id={delivery.id}" in str(failures[0])


def test_tampered_arguments_fail_without_a_call_or_a_retry(
    in_process: InProcessCelery, job_watch: JobWatch
) -> None:
    """Jobs whose arguments are not exactly one canonical id fail once: no call, no retry."""
    channel = FakeChannel()
    engine = in_process.make_engine({"sms": channel}, retry=RETRY)
    live = engine.store.create(
        NewDelivery(channel="sms", recipient="+15550100"), now=engine.clock.now()
    ).delivery
    engine.store.delete_outbox([live.id])
    app = engine.backend.app  # type: ignore[attr-defined]
    queue = in_process.broker.queue
    for args, kwargs in [
        ([], {}),
        (["not-a-uuid"], {}),
        ([live.id.hex], {}),
        ([str(live.id), str(live.id)], {}),
        ([str(live.id)], {"delivery_id": str(live.id)}),
        ([{"id": str(live.id)}], {}),
    ]:
        app.send_task(TASK_NAME, args=args, kwargs=kwargs, queue=queue)
    engine.cancel(live.id)  # so "idle" means every job ran, not that the delivery was sent
    failures = run_watched_until_idle(engine, job_watch)
    assert ([InvalidJobError] * 6, 0, []) == (
        [type(f) for f in failures],
        job_watch.retries,
        channel.calls,
    )


class FailsOnce:
    """A policy that raises the first time it is evaluated in the worker."""

    name = "fails_once"

    def __init__(self) -> None:
        self.raised = False

    def evaluate(self, delivery: Delivery, context: PolicyContext) -> PolicyDecision:
        """Raise once, then proceed."""
        if context.phase.value == "perform" and not self.raised:
            self.raised = True
            raise RuntimeError("policy backend unavailable")
        return Proceed()


def test_a_crash_in_perform_is_retried_after_the_error_delay(
    in_process: InProcessCelery, job_watch: JobWatch
) -> None:
    """perform() raising something unexpected is logged and retried, and the delivery is sent."""
    channel = FakeChannel()
    in_process.backend_options = {"error_retry_delay": 0.2}
    engine = in_process.make_engine({"sms": channel}, retry=RETRY, policies=(FailsOnce(),))
    delivery = engine.notify("sms", "+15550100")
    failures = run_watched_until_idle(engine, job_watch)
    assert (DeliveryStatus.SUCCEEDED, 1, [], 1) == (
        engine.get(delivery.id).delivery.status,
        len(channel.calls),
        failures,
        job_watch.retries,
    )


def test_the_worker_bootstep_runs_the_rescuer(
    in_process: InProcessCelery, job_watch: JobWatch, pg_store: SQLStore
) -> None:
    """A worker with rescue_interval resolves a dead worker's attempt on its own."""
    channel = FakeChannel(timeout=0.2)
    in_process.backend_options = {"rescue_interval": 0.2}
    engine = in_process.make_engine({"sms": channel}, retry=RETRY, lease_margin=0.1)
    created = pg_store.create(
        NewDelivery(channel="sms", recipient="+15550100"), now=engine.clock.now()
    ).delivery
    pg_store.delete_outbox([created.id])
    claim = pg_store.claim(created.id, owner="dead", lease_seconds=0.3, now=engine.clock.now())
    assert claim is not None
    run_watched_until_idle(engine, job_watch)
    outcomes = [a.outcome.value if a.outcome else None for a in engine.get(created.id).attempts]
    assert (DeliveryStatus.SUCCEEDED, ["unknown", "succeeded"]) == (
        engine.get(created.id).delivery.status,
        outcomes,
    )


def _app(broker_url: str = "redis://127.0.0.1:6379/14", **conf: object) -> Celery:
    app = Celery("config", broker=broker_url, set_as_current=False)
    app.conf.update({"worker_prefetch_multiplier": 1, **conf})
    CeleryBackend(app)
    return app


def test_recommended_configuration_has_nothing_to_report() -> None:
    """JSON only, late acks, prefetch 1 and a long enough visibility timeout: no problem."""
    assert [] == check_configuration(_app(), longest_delay=3600)
    assert [] == check_configuration(_app("amqp://localhost//"), longest_delay=86400)


@pytest.mark.parametrize(
    ("conf", "longest", "expected"),
    [
        ({"broker_transport_options": {"visibility_timeout": 60}}, 3600, "visibility_timeout"),
        ({}, 7200, "visibility_timeout"),
        ({"accept_content": ["json", "pickle"]}, 1, "accept_content allows pickle"),
        ({"worker_prefetch_multiplier": 4}, 1, "worker_prefetch_multiplier is 4"),
        ({"task_always_eager": True}, 1, "task_always_eager"),
        ({"worker_deduplicate_successful_tasks": True}, 1, "deduplicate"),
    ],
)
def test_each_risky_setting_is_reported(
    conf: dict[str, object], longest: float, expected: str
) -> None:
    """Each risky setting yields exactly one problem naming it."""
    problems = check_configuration(_app(**conf), longest_delay=longest)
    assert [True] == [expected in problem for problem in problems]


def test_late_ack_switched_off_on_the_task_is_reported_and_warned() -> None:
    """A task with late acks and reject-on-worker-lost off: two warnings at worker start."""
    app = _app()
    task = app.tasks[TASK_NAME]
    task.acks_late = False
    task.reject_on_worker_lost = False
    with pytest.warns(CeleryConfigurationWarning) as caught:
        warn_configuration(app, longest_delay=1)
    assert [["late acknowledgement"], ["task_reject_on_worker_lost"]] == [
        [w for w in ("late acknowledgement", "task_reject_on_worker_lost") if w in str(c.message)]
        for c in caught
    ]


def test_load_engine_from_a_path_a_factory_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_store: SQLStore
) -> None:
    """An import path names an engine or a factory; CHIMEWAY_APP is read when none is given."""
    (tmp_path / "chimeway_load_probe.py").write_text(
        "from chimeway_backends.memory import MemoryBackend\n"
        "from chimeway_core.engine import Chimeway\n"
        "from chimeway_core.store import SQLStore\n"
        "class Holder:\n"
        "    engine = None\n"
        "def make():\n"
        "    return Holder.engine\n"
        "not_an_engine = 42\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import chimeway_load_probe  # type: ignore[import-not-found]

    from chimeway_backends.memory import MemoryBackend

    engine = Chimeway(pg_store, MemoryBackend(), {})
    chimeway_load_probe.Holder.engine = engine
    monkeypatch.setenv("CHIMEWAY_APP", "chimeway_load_probe:make")
    assert [engine, engine, engine, engine] == [
        load_engine(engine),
        load_engine("chimeway_load_probe:Holder.engine"),
        load_engine("chimeway_load_probe:make"),
        load_engine(None),
    ]


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ("no_colon", "expected module:attribute"),
        ("chimeway_no_such_module:engine", "no module named"),
        ("chimeway_core.engine:nothing_here", "has no attribute"),
        ("chimeway_core.engine:__name__", "is a str, not a Chimeway"),
    ],
)
def test_load_engine_says_what_is_wrong(target: str, problem: str) -> None:
    """A bad import path raises EngineNotFoundError naming the path and the problem."""
    with pytest.raises(EngineNotFoundError, match=problem) as raised:
        load_engine(target)
    assert target == raised.value.path


def test_load_engine_without_a_path_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No engine and no CHIMEWAY_APP: the error says how to give one."""
    monkeypatch.delenv("CHIMEWAY_APP", raising=False)
    with pytest.raises(EngineNotFoundError, match="CHIMEWAY_APP"):
        load_engine(None)


def test_binding_a_second_engine_is_refused(pg_store: SQLStore) -> None:
    """A backend performs with one engine per process."""

    backend = CeleryBackend(Celery("bind", broker="memory://", set_as_current=False))
    first = Chimeway(pg_store, backend, {})
    backend.bind(first)
    backend.bind(first)
    with pytest.raises(ValueError, match="another engine"):
        backend.bind(Chimeway(pg_store, backend, {}))
    assert first is backend.engine()


def test_a_soft_time_limit_is_an_interrupt() -> None:
    """SoftTimeLimitExceeded is declared an interrupt: the engine leaves the attempt to rescue."""
    from celery.exceptions import SoftTimeLimitExceeded

    assert (SoftTimeLimitExceeded,) == CeleryBackend.interrupts


def test_a_routed_channel_runs_and_retries_on_its_own_queue(
    broker: Broker, pg_store: SQLStore
) -> None:
    """A worker of the routed queue alone runs the sms delivery, its retry too; email waits."""
    routed_broker = Broker(broker.name, broker.url, f"{broker.queue}-sms", broker.transport_options)
    app = broker.app()
    backend = CeleryBackend(app, queue=broker.queue, rescue_interval=None)
    routed = Routed(pg_store, backend, routed_broker.queue, RETRY)
    try:
        with worker_for(app, routed.queue):
            sms, email = routed.notify_both()
            wait_until(
                lambda: routed.status(sms) is DeliveryStatus.SUCCEEDED, what="the sms delivery"
            )
        # Celery on Redis would send a retry to the default queue: chimeway names the route.
        assert (2, 0, DeliveryStatus.READY) == routed.only_sms_ran(email)
        with worker_for(app, broker.queue):
            wait_until(lambda: routed.status(email) is DeliveryStatus.SUCCEEDED, what="the email")
        assert (2, 1) == (len(routed.sms.calls), len(routed.email.calls))
    finally:
        cleanup_broker(routed_broker)
