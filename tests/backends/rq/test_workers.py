"""Real RQ worker subprocesses (the ``rq`` CLI with chimeway's worker classes) on PostgreSQL.

The workers run :mod:`tests.backends.rq.worker_app` through ``CHIMEWAY_APP``,
exactly as the documentation tells users to; the test process builds the same
engine to notify, and reads the outcome from the ledger and from the call log
every channel call appends to.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from uuid import UUID

import attrs
import pytest
import redis
import rq
from rq.serializers import DefaultSerializer
from sqlalchemy import Engine, text

from chimeway_backends.rq import RQBackend, deliver
from chimeway_core import NewDelivery, Outcome
from chimeway_core.engine import Chimeway
from chimeway_core.jobs import job_id_for
from chimeway_core.store import SQLStore
from tests.backends._workers import wait_until
from tests.backends.rq import worker_app
from tests.backends.rq.conftest import (
    REDIS_FLUSH_DB,
    REDIS_TEST_DB,
    Workers,
    purge,
    redis_url,
)

__all__ = ["wait_until"]  # shared with test_namespaces and test_schedules

ROOT = Path(__file__).resolve().parents[3]
RQ_CLI = str(Path(sys.executable).with_name("rq"))
TERMINAL = ("succeeded", "cancelled", "suppressed")


@attrs.define
class App:
    """One test's application: its configuration, and the engine the test process uses."""

    db_url: str
    redis_url: str
    queue: str
    calls: Path
    markers: Path
    db: Engine
    settings: dict[str, str] = attrs.field(factory=dict)
    engine: Chimeway = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.engine = worker_app.build(
            db_url=self.db_url,
            redis_url=self.redis_url,
            queue=self.queue,
            calls=self.calls,
            markers=self.markers,
            lease_margin=float(self.settings.get("APP_LEASE_MARGIN", "2.0")),
            requeue_after=float(self.settings.get("APP_REQUEUE_AFTER", "300")),
            namespace=self.settings.get("APP_NAMESPACE"),
        )

    @property
    def backend(self) -> RQBackend:
        """The engine's RQ backend."""
        backend = self.engine.backend
        assert isinstance(backend, RQBackend)
        return backend

    def env(self) -> dict[str, str]:
        """The environment of a worker subprocess."""
        return {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
            "CHIMEWAY_APP": "tests.backends.rq.worker_app:engine",
            "CHIMEWAY_RESCUE_INTERVAL": "0.5",
            "APP_DB_URL": self.db_url,
            "APP_REDIS_URL": self.redis_url,
            "APP_QUEUE": self.queue,
            "APP_CALLS": str(self.calls),
            "APP_MARKERS": str(self.markers),
            **self.settings,
        }

    def worker_command(self, worker_class: str, *, burst: bool) -> list[str]:
        """The documented invocation: ``rq worker -w ... --with-scheduler --serializer ...``."""
        command = [RQ_CLI, "worker", "--url", self.redis_url, "-w", worker_class]
        command += ["--with-scheduler", "--serializer", "rq.serializers.JSONSerializer"]
        return [*command, "--quiet", *(["--burst"] if burst else []), self.queue]

    def notify_many(self, recipients: Sequence[str]) -> list[UUID]:
        """Notify one delivery per recipient on the scripted channel."""
        specs = [
            NewDelivery(channel="scripted", recipient=r, max_attempts=worker_app.RETRY.max_attempts)
            for r in recipients
        ]
        return [d.id for d in self.engine.notify_many(specs)]

    def rows(self) -> dict[UUID, tuple[str, str | None, int]]:
        """Every delivery: (status, reason, attempt count)."""
        with self.db.connect() as conn:
            result = conn.execute(
                text("SELECT id, status, reason, attempt_count FROM chimeway_deliveries")
            )
            return {UUID(str(row[0])): (row[1], row[2], row[3]) for row in result}

    def live(self) -> int:
        """How many deliveries are not terminal."""
        return sum(1 for status, _, _ in self.rows().values() if status not in TERMINAL)

    def call_log(self) -> list[dict[str, object]]:
        """Every channel call made so far, by any process."""
        if not self.calls.exists():
            return []
        return [json.loads(line) for line in self.calls.read_text().splitlines()]

    def drain_in_bursts(self, worker_class: str, *, timeout: float) -> int:
        """Run burst workers until no delivery is live; return how many bursts it took."""
        deadline = time.monotonic() + timeout
        bursts = 0
        while self.live():
            assert time.monotonic() < deadline, f"{self.live()} deliveries still live"
            run = subprocess.run(  # noqa: PLW1510 - the return code is asserted below
                self.worker_command(worker_class, burst=True),
                env=self.env(),
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert 0 == run.returncode, run.stderr[-3000:]
            bursts += 1
            time.sleep(0.3)
        return bursts


@pytest.fixture
def make_app(
    tmp_path: Path,
    postgres_database: str,
    postgres_engine: Engine,
    pg_store: SQLStore,
    queue_name: str,
) -> Iterator[Callable[..., App]]:
    """Build the test's application (deliveries are truncated after the test by ``pg_store``)."""
    made: list[App] = []

    def make(redis_db: int = REDIS_TEST_DB, **settings: str) -> App:
        (tmp_path / "markers").mkdir(exist_ok=True)
        app = App(
            db_url=postgres_database,
            redis_url=redis_url(redis_db),
            queue=queue_name,
            calls=tmp_path / "calls.jsonl",
            markers=tmp_path / "markers",
            db=postgres_engine,
            settings=settings,
        )
        made.append(app)
        return app

    yield make
    for app in made:
        app.engine.store.engine.dispose()
        app.backend.connection.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[[App, str], subprocess.Popen[bytes]]]:
    """Start long-running workers; stop them (SIGTERM, then SIGKILL) at teardown."""
    workers = Workers(tmp_path)

    def start(app: App, worker_class: str) -> subprocess.Popen[bytes]:
        return workers.start(app.worker_command(worker_class, burst=False), app.env())[0]

    yield start
    workers.stop(timeout=15)


def calls_by_delivery(app: App) -> dict[str, list[dict[str, object]]]:
    """The call log grouped by delivery id."""
    grouped: defaultdict[str, list[dict[str, object]]] = defaultdict(list)
    for call in app.call_log():
        grouped[str(call["delivery"])].append(call)
    return grouped


@pytest.mark.slow
@pytest.mark.parametrize(
    "worker_class",
    ["chimeway_backends.rq.ChimewayWorker", "chimeway_backends.rq.ChimewaySimpleWorker"],
)
def test_two_hundred_mixed_deliveries_end_terminal_with_the_right_attempts(
    make_app: Callable[..., App], worker_class: str
) -> None:
    """200 deliveries with scripted results all end terminal with the scripted attempt counts."""
    app = make_app()
    ids = app.notify_many([f"mix-{n}" for n in range(200)])
    app.drain_in_bursts(worker_class, timeout=600)
    rows = app.rows()
    expected = {delivery_id: worker_app.EXPECTED[n % 5] for n, delivery_id in enumerate(ids)}
    assert expected == rows
    calls = calls_by_delivery(app)
    assert {str(i): rows[i][2] for i in ids} == {d: len(c) for d, c in calls.items()}
    keys = {str(i): app.engine.get(i).delivery.idempotency_key for i in ids}
    assert keys == {d: next(iter({str(c["key"]) for c in cs})) for d, cs in calls.items()}
    assert all(len({c["key"] for c in cs}) == 1 for cs in calls.values())


@pytest.mark.slow
def test_killing_the_work_horse_mid_call_is_rescued(
    make_app: Callable[..., App], spawn: Callable[[App, str], subprocess.Popen[bytes]]
) -> None:
    """SIGKILL of the work horse mid-call, 20 times: each delivery is rescued and sent once more.

    The lease is 3 s (channel timeout 1 s + margin 2 s), the RQ job timeout 3 s.
    """
    app = make_app(APP_LEASE_MARGIN="2.0", APP_JOB_TIMEOUT="3")
    ids = app.notify_many([f"block-{n}" for n in range(20)])
    spawn(app, "chimeway_backends.rq.ChimewayWorker")
    killed: set[str] = set()

    def kill_new_horses() -> bool:
        for marker in app.markers.iterdir():
            if marker.suffix or marker.name in killed:
                continue
            # The horse may already be gone: RQ's job timeout (3 s) ends it the same way.
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(marker.read_text()), signal.SIGKILL)
            killed.add(marker.name)
        return app.live() == 0

    wait_until(kill_new_horses, timeout=600, what="every delivery to end")
    assert {str(i) for i in ids} == killed
    calls = calls_by_delivery(app)
    for delivery_id in ids:
        history = app.engine.get(delivery_id)
        assert ("succeeded", [Outcome.UNKNOWN, Outcome.SUCCEEDED]) == (
            history.delivery.status.value,
            [a.outcome for a in history.attempts],
        )
        made = calls[str(delivery_id)]
        assert ([1, 2], {history.delivery.idempotency_key}) == (
            [c["attempt"] for c in made],
            {c["key"] for c in made},
        )


@pytest.mark.slow
def test_one_delivery_enqueued_ten_times_with_two_workers_is_sent_once(
    make_app: Callable[..., App],
    spawn: Callable[[App, str], subprocess.Popen[bytes]],
    redis_conn: redis.Redis,
) -> None:
    """Ten enqueues at once (and ten raw pushes of its job id) with two workers: one call."""
    app = make_app()
    spawn(app, "chimeway_backends.rq.ChimewayWorker")
    spawn(app, "chimeway_backends.rq.ChimewaySimpleWorker")
    wait_until(
        lambda: len(rq.Worker.all(queue=app.backend.queue)) == 2, timeout=120, what="two workers"
    )
    (delivery_id,) = app.notify_many(["slow-1"])
    gate = threading.Barrier(9)

    def enqueue() -> None:
        gate.wait()
        app.backend.enqueue(delivery_id)

    threads = [threading.Thread(target=enqueue) for _ in range(9)]
    for thread in threads:
        thread.start()
    # A queue that did not deduplicate: the same job id pushed ten times over.
    redis_conn.rpush(app.backend.queue.key, *[job_id_for(delivery_id)] * 10)
    for thread in threads:
        thread.join()
    wait_until(
        lambda: app.live() == 0 and app.backend.queue.count == 0,
        timeout=120,
        what="the delivery to end and the queue to empty",
    )
    history = app.engine.get(delivery_id)
    assert (1, 1) == (len(history.attempts), len(app.call_log()))


@pytest.mark.slow
def test_a_flushed_redis_is_refilled_by_the_rescuer(make_app: Callable[..., App]) -> None:
    """FLUSHDB drops queued and scheduled jobs; the workers' rescuer requeues every delivery."""
    flush_db = redis.Redis.from_url(redis_url(REDIS_FLUSH_DB))
    flush_db.flushdb()
    app = make_app(redis_db=REDIS_FLUSH_DB, APP_REQUEUE_AFTER="0.5")
    retrying = app.notify_many([f"mix-{n}" for n in range(1, 100, 5)])
    run = subprocess.run(  # noqa: PLW1510 - the return code is asserted below
        app.worker_command("chimeway_backends.rq.ChimewaySimpleWorker", burst=True),
        env=app.env(),
        cwd=ROOT,
        capture_output=True,
        timeout=600,
    )
    assert 0 == run.returncode, run.stderr[-3000:]
    assert 20 == len(app.backend.queue.scheduled_job_registry.get_job_ids())
    queued = app.notify_many([f"mix-{n}" for n in range(0, 100, 5)])
    assert 20 == app.backend.queue.count
    flush_db.flushdb()
    time.sleep(0.6)
    app.drain_in_bursts("chimeway_backends.rq.ChimewaySimpleWorker", timeout=600)
    rows = app.rows()
    assert (
        dict.fromkeys(retrying, ("succeeded", None, 2))
        | dict.fromkeys(queued, ("succeeded", None, 1))
        == rows
    )
    flush_db.flushdb()
    flush_db.close()


class _Canary:
    """Unpickling this touches a file: proof that a pickle payload ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, ...]:
        return (Path.touch, (self.path,))


@pytest.mark.slow
def test_pickle_payloads_never_run_and_tampered_jobs_do_not_loop(
    make_app: Callable[..., App], tmp_path: Path, redis_conn: redis.Redis
) -> None:
    """A pickled job never runs its payload; bad arguments make no call and fail once, for good."""
    app = make_app()
    canary = tmp_path / "canary"
    (real,) = app.notify_many(["mix-0"])
    app.backend.queue.empty()  # type: ignore[no-untyped-call]  # rq leaves it untyped
    pickled = rq.Queue(app.queue, connection=redis_conn, serializer=DefaultSerializer)
    evil = pickled.enqueue_call("chimeway_backends.rq.deliver", args=(_Canary(canary),))
    pickle.loads(evil.data)
    assert canary.exists()
    canary.unlink()
    unknown = str(uuid.uuid4())
    queue = app.backend.queue
    tampered = [
        queue.enqueue(deliver, str(real), "extra"),
        queue.enqueue(deliver, str(real), delivery_id=str(real)),
        queue.enqueue(deliver, "not-a-uuid"),
        queue.enqueue(deliver, str(real).replace("-", "")),
    ]
    harmless = queue.enqueue(deliver, unknown)
    for _ in range(2):
        # Without --serializer: a chimeway worker reads JSON whatever the CLI default is.
        command = [RQ_CLI, "worker", "--url", app.redis_url, "-w"]
        command += ["chimeway_backends.rq.ChimewayWorker", "--burst", "--quiet", app.queue]
        run = subprocess.run(  # noqa: PLW1510 - the return code is asserted below
            command, env=app.env(), cwd=ROOT, capture_output=True, timeout=600
        )
        assert 0 == run.returncode, run.stderr[-3000:]
    assert not canary.exists()
    assert ([], 0, {}) == (
        app.call_log(),
        queue.count,
        dict(Counter(queue.scheduled_job_registry.get_job_ids())),
    )
    failed = set(queue.failed_job_registry.get_job_ids())
    assert {evil.id} | {job.id for job in tampered} == failed
    assert ("ready", 0) == (app.rows()[real][0], app.rows()[real][2])
    finished = queue.fetch_job(harmless.id)
    assert finished is not None
    assert "ack: delivery not found" == finished.return_value()


def test_an_unreachable_redis_fails_under_require_services(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With CHIMEWAY_REQUIRE_SERVICES=1 a Redis that does not answer fails the test, never skips."""
    from tests import services

    monkeypatch.setitem(services._ENDPOINTS, "redis", ("127.0.0.1", 1))
    monkeypatch.setenv("CHIMEWAY_REQUIRE_SERVICES", "1")
    with pytest.raises(pytest.fail.Exception, match="redis is not reachable"):
        services.require("redis")
    monkeypatch.setenv("CHIMEWAY_REQUIRE_SERVICES", "0")
    with pytest.raises(pytest.skip.Exception, match="redis is not reachable"):
        services.require("redis")


def test_purge_leaves_other_queues_alone(redis_conn: redis.Redis, queue_name: str) -> None:
    """The teardown purge deletes one queue's keys and nothing else."""
    other = f"chimeway-other-{uuid.uuid4().hex[:12]}"
    RQBackend(redis_conn, other).enqueue(uuid.uuid4())
    RQBackend(redis_conn, queue_name).enqueue(uuid.uuid4())
    purge(redis_conn, queue_name)
    assert (0, 1) == (
        rq.Queue(queue_name, connection=redis_conn).count,
        rq.Queue(other, connection=redis_conn).count,
    )
    purge(redis_conn, other)


@pytest.mark.slow
@pytest.mark.parametrize(
    "worker_class",
    ["chimeway_backends.rq.ChimewayWorker", "chimeway_backends.rq.ChimewaySimpleWorker"],
)
def test_sigterm_stops_a_worker_that_is_rescuing(
    make_app: Callable[..., App], tmp_path: Path, worker_class: str
) -> None:
    """A warm shutdown lets a rescue in progress finish, then the worker exits cleanly."""
    app = make_app(CHIMEWAY_RESCUE_INTERVAL="0.01", APP_RESCUE_PAUSE="2")
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            app.worker_command(worker_class, burst=False),
            env=app.env(),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            lambda: len(rq.Worker.all(queue=app.backend.queue)) == 1, timeout=120, what="the worker"
        )
        time.sleep(1.0)  # in the middle of a two-second rescue
        process.send_signal(signal.SIGTERM)
        assert 0 == process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "rescue failed" not in log.read_text()
