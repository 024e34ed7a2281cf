"""A Celery worker refuses pickle before it takes a message; ``chimeway worker``'s node options.

The refusals run real worker processes (``celery -A`` and ``chimeway worker
--backend celery``) on ``worker_app.py``, with a chimeway job already on the
queue: the process exits non-zero naming the setting, the job is still on
the queue, and a worker without the setting then delivers it. The node
options run ``chimeway worker`` on RabbitMQ and look at what the worker left
on the broker: its ``celery.pidbox`` queue and its events.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import amqp.exceptions
import pytest
from celery import Celery
from celery.exceptions import SecurityError
from kombu import Connection, Exchange, Queue
from sqlalchemy import Engine

from chimeway_backends.celery import (
    CeleryBackend,
    UnsafeSerializerError,
    check_configuration,
    run_worker,
)
from chimeway_core import DeliveryStatus
from chimeway_core.errors import ChimewayError
from chimeway_core.store import SQLStore
from tests.backends._workers import APP_MODULE, MAX_ATTEMPTS, stop, wait_all_terminal
from tests.backends.celery.conftest import Broker, cleanup_broker, make_broker, wait_until
from tests.backends.celery.workers import WorkerSetup, celery_worker, make_setup
from tests.cli.conftest import COMMAND
from tests.services import RABBITMQ_URL, require

pytestmark = [
    pytest.mark.slow,
    # As root, with C_FORCE_ROOT (below), Celery warns that the worker runs as root.
    pytest.mark.filterwarnings("ignore::celery.exceptions.SecurityWarning"),
]

#: Each way a Celery app can let chimeway's task take pickle, and the setting named.
PICKLE_SETTINGS: list[tuple[dict[str, Any], str]] = [
    ({"accept_content": ["json", "pickle"]}, "accept_content"),
    ({"accept_content": ["application/x-python-serialize"]}, "accept_content"),
    ({"result_accept_content": ["json", "pickle"]}, "result_accept_content"),
    ({"task_serializer": "pickle"}, "task_serializer"),
    ({"task_annotations": {"chimeway.deliver": {"serializer": "pickle"}}}, "chimeway.deliver"),
    ({"task_annotations": {"*": {"serializer": "pickle"}}}, "chimeway.deliver"),
]

#: How long a refused worker may take to exit.
EXIT_TIMEOUT = 60.0


@pytest.fixture(autouse=True)
def _force_root(monkeypatch: pytest.MonkeyPatch) -> None:
    # As root, Celery itself refuses a worker that accepts pickle (another check,
    # of privileges, not of content): without this, the refusal tested could be
    # Celery's, not chimeway's.
    monkeypatch.setenv("C_FORCE_ROOT", "1")


@pytest.mark.parametrize(("conf", "setting"), PICKLE_SETTINGS)
def test_a_worker_of_an_app_that_takes_pickle_is_never_built(
    conf: dict[str, Any], setting: str
) -> None:
    """Each way of taking pickle: building the worker raises, naming the setting and its fix."""
    app = Celery("pickled", broker=RABBITMQ_URL, set_as_current=False)
    app.conf.update({"worker_prefetch_multiplier": 1, **conf})
    CeleryBackend(app)
    with pytest.raises(UnsafeSerializerError) as raised:
        app.Worker(pool_cls="solo", concurrency=1)
    error = raised.value
    assert isinstance(error, ChimewayError)
    assert isinstance(error, SecurityError)  # celery worker prints it in one line
    assert [setting] == [name.split(".serializer")[0] for name in error.settings]
    assert setting in str(error)
    assert "set " in str(error) or "remove it" in str(error)
    assert [True] == ["pickle" in problem for problem in check_configuration(app, longest_delay=1)]
    with pytest.raises(UnsafeSerializerError):
        run_worker(_engine_of(app), pool="solo")


def _engine_of(app: Any) -> Any:
    from chimeway_core.engine import Chimeway
    from chimeway_core.testing import FakeChannel

    backend = app._chimeway_backend
    return Chimeway(SQLStore("sqlite://"), backend, {"scripted": FakeChannel()})


def test_a_json_app_builds_its_worker() -> None:
    """The control: the same app without pickle builds its worker."""
    app = Celery("json", broker=RABBITMQ_URL, set_as_current=False)
    CeleryBackend(app)
    assert app.Worker(pool_cls="solo", concurrency=1) is not None


def _queued(setup: WorkerSetup) -> int:
    """How many messages are on the worker's queue, as the broker counts them."""
    broker = setup.broker
    if broker.name == "redis":
        # kombu's passive declare misses a queue under a global key prefix: read the list.
        import redis

        client = redis.Redis.from_url(broker.url)
        try:
            prefix = broker.transport_options["global_keyprefix"]
            return int(client.llen(f"{prefix}{broker.queue}"))
        finally:
            client.close()
    with Connection(broker.url) as connection:
        return int(connection.default_channel.queue_declare(broker.queue, passive=True)[1])


def _wait_exit(process: subprocess.Popen[bytes], log: Path) -> int:
    try:
        return process.wait(timeout=EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        stop(process)
        pytest.fail(f"the worker did not refuse to start:\n{log.read_text()[-3000:]}")


def _then_a_json_worker_delivers(setup: WorkerSetup, store: SQLStore, delivery_id: Any) -> None:
    """The job left on the queue is still whole: a worker without the setting delivers it."""
    with celery_worker(setup, pool="solo", concurrency=1):
        wait_all_terminal(store)
    assert DeliveryStatus.SUCCEEDED == store.get(delivery_id).status
    assert 1 == len(setup.calls())


def test_celery_worker_refuses_pickle_and_leaves_the_job_on_the_queue(
    broker: Broker,
    pg_store: SQLStore,
    postgres_database: str,
    postgres_engine: Engine,
    tmp_path: Path,
) -> None:
    """``celery -A app worker`` with pickle accepted: exit 1, the message named, nothing taken."""
    setup = make_setup(broker, tmp_path, postgres_database)
    producer = setup.producer(postgres_engine)
    delivery = producer.notify("scripted", "ok-1", max_attempts=MAX_ATTEMPTS)
    assert 1 == _queued(setup)
    command = [
        sys.executable, "-m", "celery", "-A", APP_MODULE, "worker", "--pool", "solo",
        "--queues", broker.queue, "--without-gossip", "--without-mingle",
        "--without-heartbeat", "--hostname", f"{broker.queue}@%h",
    ]  # fmt: skip
    conf = json.dumps({"accept_content": ["json", "pickle"]})
    with setup.log.open("ab") as log:
        process = subprocess.Popen(
            command,
            cwd=setup.workdir,
            env=setup.env(CHIMEWAY_TEST_CONF=conf),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    code = _wait_exit(process, setup.log)
    output = setup.log.read_text()
    assert 1 == code, output[-3000:]
    assert "chimeway refuses to start a worker" in output
    assert "accept_content allows pickle ('pickle'): set accept_content=['json']" in output
    assert "Traceback" not in output
    assert " ready." not in output
    assert (1, [], 0) == (_queued(setup), setup.calls(), pg_store.get(delivery.id).attempt_count)
    _then_a_json_worker_delivers(setup, pg_store, delivery.id)


def test_chimeway_worker_refuses_pickle_with_one_line_and_exit_2(
    pg_store: SQLStore, postgres_database: str, postgres_engine: Engine, tmp_path: Path
) -> None:
    """``chimeway worker --backend celery`` on an app with task_serializer pickle: exit 2."""
    require("rabbitmq")
    broker = make_broker("rabbitmq")
    try:
        setup = make_setup(broker, tmp_path, postgres_database)
        producer = setup.producer(postgres_engine)
        delivery = producer.notify("scripted", "ok-1", max_attempts=MAX_ATTEMPTS)
        done = subprocess.run(
            [*COMMAND, "worker", "--backend", "celery", "--app", f"{APP_MODULE}:engine"],
            cwd=setup.workdir,
            env=setup.env(CHIMEWAY_TEST_CONF=json.dumps({"task_serializer": "pickle"})),
            capture_output=True,
            text=True,
            timeout=EXIT_TIMEOUT,
            check=False,
        )
        assert (2, "") == (done.returncode, done.stdout), done.stderr
        (line,) = done.stderr.splitlines()
        assert line.startswith("chimeway: error: chimeway refuses to start a worker")
        assert "task_serializer is 'pickle': set task_serializer='json'" in line
        left = (_queued(setup), setup.calls(), pg_store.get(delivery.id).attempt_count)
        assert (1, [], 0) == left
        _then_a_json_worker_delivers(setup, pg_store, delivery.id)
    finally:
        cleanup_broker(broker)


# -- the node options ---------------------------------------------------------------------


@contextmanager
def _events_of(name: str) -> Iterator[list[dict[str, Any]]]:
    """Every worker event RabbitMQ routes while the block runs (read after), on our own queue."""
    events: list[dict[str, Any]] = []
    queue = Queue(
        f"{name}-events",
        Exchange("celeryev", type="topic"),
        routing_key="worker.#",
        auto_delete=False,
    )
    with Connection(RABBITMQ_URL) as connection:
        channel = connection.channel()
        queue(channel).declare()
        try:
            yield events
            while (message := channel.basic_get(queue.name, no_ack=True)) is not None:
                events.append(json.loads(message.body))
        finally:
            channel.queue_delete(queue.name)
            channel.close()


def _pidbox_exists(node: str) -> bool:
    """Whether RabbitMQ has the worker's remote-control queue (passive declare).

    The queue is exclusive to the worker's connection: RabbitMQ answers
    another connection's passive declare RESOURCE_LOCKED when it exists.
    """
    with Connection(RABBITMQ_URL) as connection:
        channel = connection.channel()
        try:
            channel.queue_declare(f"{node}.celery.pidbox", passive=True)
        except amqp.exceptions.NotFound:
            return False
        except amqp.exceptions.ResourceLocked:
            return True
        channel.close()
        return True


@pytest.mark.parametrize("switched_off", [False, True], ids=["celery-defaults", "without-all"])
def test_node_options_reach_the_celery_worker(
    pg_store: SQLStore,
    postgres_database: str,
    postgres_engine: Engine,
    tmp_path: Path,
    switched_off: bool,
) -> None:
    """--hostname names the node; --without-* leave no pidbox queue, no events, no mingle."""
    require("rabbitmq")
    broker = make_broker("rabbitmq")
    node = f"{broker.queue}@{socket.gethostname()}"
    command = [
        "worker", "--backend", "celery", "--app", f"{APP_MODULE}:engine",
        "--concurrency", "1", "--log-level", "info", "--hostname", f"{broker.queue}@%h",
    ]  # fmt: skip
    off = [
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "--without-remote-control",
    ]
    try:
        setup = make_setup(broker, tmp_path, postgres_database)
        producer = setup.producer(postgres_engine)
        with _events_of(broker.queue) as events, setup.log.open("ab") as log:
            process = subprocess.Popen(
                [*COMMAND, *command, *(off if switched_off else [])],
                cwd=setup.workdir,
                # worker_app.py switches remote control off; here, Celery's default is wanted.
                env=setup.env(CHIMEWAY_TEST_CONF='{"worker_enable_remote_control": true}'),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                delivery = producer.notify("scripted", "ok-1", max_attempts=MAX_ATTEMPTS)
                wait_until(
                    lambda: (
                        pg_store.get(delivery.id).status == DeliveryStatus.SUCCEEDED
                        or process.poll() is not None
                    ),
                    what="the worker to deliver",
                )
                assert process.poll() is None, setup.log.read_text()[-3000:]
                pidbox = _pidbox_exists(node)
            finally:
                stop(process)
        output = setup.log.read_text()
        assert 0 == process.returncode, output[-3000:]
        assert node in output  # Celery's banner names the node, %h expanded
        from_node = sorted({event["type"] for event in events if event.get("hostname") == node})
        if switched_off:
            assert (False, [], False) == (pidbox, from_node, "mingle:" in output)
        else:
            assert pidbox
            assert {"worker-online", "worker-offline"} <= set(from_node)
            assert "mingle: searching for neighbors" in output
    finally:
        cleanup_broker(broker)
