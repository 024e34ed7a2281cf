"""The deployments the scenarios attack: memory, RQ, Celery on Redis, Celery on RabbitMQ.

Dramatiq on RabbitMQ is :mod:`tests.faults.dramatiq_deployment`.

A :class:`Deployment` is one application on one backend: a producer engine
in the test process (it notifies and cancels), workers (threads for memory,
real ``rq worker`` / ``celery worker`` processes otherwise), the run's shared
files and the faults the test injected as a whole. Every wait is a bounded
poll. Worker processes that die are started again, as a process supervisor
would, and counted in :attr:`Deployment.restarts`.

The memory backend has no process to kill: a "process" is a node (a
:class:`~chimeway_backends.memory.MemoryBackend` with its engine) and a
SIGKILL is :class:`WorkerKilled`, a ``BaseException`` that unwinds the job
with no cleanup; the node is then replaced by a fresh one and its queue is
lost, exactly what a killed process loses. By default the memory deployment
runs on a :class:`~chimeway_core.clock.VirtualClock`, driven from the test
thread (leases expire in no time); with ``realtime`` it runs
:class:`~chimeway_backends.memory.MemoryWorker` threads on the wall clock.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, NoReturn
from uuid import UUID

import attrs
from sqlalchemy import Engine, text

from chimeway_backends.memory import MemoryBackend, MemoryWorker
from chimeway_core.clock import Clock, SystemClock, VirtualClock
from chimeway_core.records import Delivery, NewDelivery
from tests.faults.app import Settings, make_engine, urgent_queue
from tests.faults.history import Expect, GlobalFault, Problem, Report, check
from tests.faults.provider import FaultEngine
from tests.faults.proxy import TcpProxy
from tests.faults.rabbitmq import RabbitMQRoute

ROOT: Final = Path(__file__).resolve().parents[2]
RQ_CLI: Final = str(Path(sys.executable).with_name("rq"))
#: The Redis database the fault suite owns (it flushes it); its tests never overlap.
RQ_REDIS_DB: Final = 12
CELERY_REDIS_DB: Final = 12
#: The file a job naming another function than chimeway's (os.mkdir) would create,
#: beside the pickle canary.
FOREIGN_CANARY: Final = "foreign-function-canary"
#: How often the virtual memory deployment moves time and runs the rescuer.
TICK: Final = 0.25
_LIVE_SQL: Final = "SELECT count(*) FROM chimeway_deliveries WHERE status IN ('ready', 'failed')"

_log = logging.getLogger(__name__)


class WorkerKilled(BaseException):
    """A memory worker dies the way a SIGKILLed process does: nothing runs after it."""


class NoHooks:
    """Hooks of the producer engine, which never performs."""

    def kill(self) -> NoReturn:
        """Never called."""
        raise AssertionError("the producer never performs")

    def sleep(self, seconds: float) -> None:
        """Never called."""
        raise AssertionError("the producer never performs")

    def overrun(self, delivery: Delivery, seconds: float) -> None:
        """Never called."""
        raise AssertionError("the producer never performs")

    def redeliver(self, delivery: Delivery) -> None:
        """Never called."""
        raise AssertionError("the producer never performs")

    def cancel(self, delivery: Delivery) -> None:
        """Never called."""
        raise AssertionError("the producer never performs")


def wait_for(predicate: Callable[[], bool], *, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it holds (``True``) or ``timeout`` passes (``False``)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


class Deployment(abc.ABC):
    """One application on one backend, with what the test injected into it."""

    name: str
    producer: FaultEngine
    clock: Clock
    db_proxy: TcpProxy | None = None

    def __init__(self, settings: Settings, db: Engine) -> None:
        self.settings = settings
        self.db = db
        self.files = settings.files
        self.global_faults: list[GlobalFault] = []
        self.extra: list[Problem] = []
        self.restarts = 0
        self.started_at = time.monotonic()

    # -- what every scenario uses -------------------------------------------

    def notify(self, specs: Sequence[NewDelivery]) -> list[Delivery]:
        """Notify through the producer, 500 at a time."""
        made: list[Delivery] = []
        for start in range(0, len(specs), 500):
            made += self.producer.notify_many(specs[start : start + 500])
        return made

    def live(self) -> int:
        """How many deliveries are not terminal."""
        with self.db.connect() as conn:
            return int(conn.execute(text(_LIVE_SQL)).scalar_one())

    def inject(self, name: str, *, post_accept: bool = False) -> None:
        """Record a fault the test injected into the whole deployment (see GlobalFault)."""
        self.global_faults.append(GlobalFault(name, post_accept))

    def problem(self, delivery_id: UUID | None, detail: str) -> None:
        """Record something the scenario saw that must not happen."""
        self.extra.append(
            Problem("unexpected", None if delivery_id is None else str(delivery_id), detail)
        )

    def check(
        self,
        scenario: str,
        *,
        expect: dict[UUID, Expect] | None = None,
        injected: int | None = None,
    ) -> Report:
        """Run the history checker over this deployment's run."""
        report = check(
            self.db,
            self.files,
            scenario=scenario,
            backend=self.name,
            expect=expect,
            global_faults=self.global_faults,
            extra=self.extra,
            injected=injected,
        )
        report.seconds = time.monotonic() - self.started_at
        return report

    def run_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Let the deployment work until ``predicate`` holds or ``timeout`` passes."""
        return wait_for(predicate, timeout=timeout)

    def drain_timeout(self, n: int) -> float:
        """A generous bound for ``n`` deliveries to end."""
        return 120.0 + 1.0 * n

    # -- what each backend implements ---------------------------------------

    @abc.abstractmethod
    def start(self) -> None:
        """Start the workers."""

    @abc.abstractmethod
    def drain(self, timeout: float) -> bool:
        """Run until no delivery is live (``True``) or ``timeout`` passes (``False``)."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop the workers gracefully (and for good, after a grace period)."""

    @abc.abstractmethod
    def shutdown(self, *, graceful: bool = True) -> None:
        """SIGTERM every worker (or shut it down cold) and wait until each has exited."""

    @abc.abstractmethod
    def restart_after_shutdown(self) -> None:
        """Start the workers again after :meth:`shutdown`."""

    @abc.abstractmethod
    def lose_queue(self) -> None:
        """Lose the queue's contents: flush Redis, drop the broker connections, lose memory."""

    @abc.abstractmethod
    def duplicate(self, ids: Sequence[UUID], copies: int) -> None:
        """Push ``copies`` more jobs for each delivery, past any deduplication."""

    @abc.abstractmethod
    def hostile_jobs(self, canary: Path, target: UUID) -> list[str]:
        """Push hostile jobs (pickle, tampered arguments, garbage); describe each one pushed.

        ``canary`` is the file a pickle payload would create (a job naming
        another function would create :data:`FOREIGN_CANARY` beside it); ``target`` a
        real, live delivery the tampered jobs name.
        """

    def hostile_settled(self, pushed: Sequence[str]) -> bool:
        """Whether the queue has dealt with every hostile job pushed."""
        return True

    def watch_broker(self, needle: bytes) -> None:  # noqa: B027 - most brokers are read back
        """Start looking for ``needle`` in what the broker carries (see broker_sightings)."""

    def broker_sightings(self, needle: bytes) -> list[str]:
        """Where in the broker's own storage (or traffic, once watched) ``needle`` occurs."""
        return []

    def close(self) -> None:
        """Stop everything and release connections."""
        self.stop()
        self.producer.store.engine.dispose()


# --------------------------------------------------------------------------- memory


@attrs.define
class _Node:
    backend: MemoryBackend
    engine: FaultEngine
    worker: MemoryWorker | None = None


class MemoryHooks:
    """How a memory node injects faults: see the module docstring."""

    def __init__(self, deployment: MemoryDeployment, index: int) -> None:
        self.deployment = deployment
        self.index = index

    def kill(self) -> NoReturn:
        """Unwind the job like a SIGKILL."""
        raise WorkerKilled

    def sleep(self, seconds: float) -> None:
        """Let time pass: advance the virtual clock, or sleep."""
        self.deployment.sleep(seconds)

    def overrun(self, delivery: Delivery, seconds: float) -> None:
        """Outlive the lease while another node rescues the delivery and retries it."""
        self.deployment.sleep(seconds)
        peer = self.deployment.peer(self.index)
        peer.engine.rescue()
        self.deployment.sleep(self.deployment.settings.timeout)
        peer.engine.perform(delivery.id)

    def redeliver(self, delivery: Delivery) -> None:
        """Another node runs a duplicate job for the delivery, now."""
        self.deployment.peer(self.index).engine.perform(delivery.id)

    def cancel(self, delivery: Delivery) -> None:
        """Cancel, as an operator would."""
        self.deployment.nodes[self.index].engine.cancel(delivery.id)


def _abandon(engine: FaultEngine) -> None:
    """Forget what a dead process had pending: it never clears its outbox rows."""
    with engine._enqueued_lock:
        engine._enqueued = []


class MemoryDeployment(Deployment):
    """The memory backend, one node per simulated process; see the module docstring."""

    def __init__(
        self, settings: Settings, db: Engine, *, nodes: int = 2, realtime: bool = False
    ) -> None:
        super().__init__(settings, db)
        self.name = "memory"
        self.realtime = realtime
        self.clock = SystemClock() if realtime else VirtualClock(datetime.now(UTC))
        self.nodes = [self._node(index) for index in range(nodes)]
        self.producer = self.nodes[0].engine
        self.running = False

    def _node(self, index: int) -> _Node:
        backend = MemoryBackend(self.clock)
        engine = make_engine(self.settings, backend, MemoryHooks(self, index), clock=self.clock)
        return _Node(backend, engine)

    def peer(self, index: int) -> _Node:
        """Another node than ``index`` (itself when it is alone)."""
        return self.nodes[(index + 1) % len(self.nodes)]

    def sleep(self, seconds: float) -> None:
        """Advance the virtual clock, or really sleep."""
        if isinstance(self.clock, VirtualClock):
            self.clock.advance(seconds)
        else:
            time.sleep(seconds)

    def restart(self, index: int) -> None:
        """Replace node ``index`` by a fresh process: its queue is lost."""
        old = self.nodes[index]
        _abandon(old.engine)
        old.engine.store.engine.dispose()
        node = self._node(index)
        self.nodes[index] = node
        if index == 0:
            self.producer = node.engine
        if self.running and self.realtime:
            self._start_worker(node)

    def _start_worker(self, node: _Node) -> None:
        node.worker = MemoryWorker(
            node.backend,
            node.engine,
            concurrency=2,
            poll_interval=0.02,
            tick=node.engine.rescue,
            tick_interval=self.settings.rescue_interval,
        )
        node.worker.start()

    def start(self) -> None:
        """Start worker threads (real time); the virtual deployment is driven by ``drain``."""
        self.running = True
        if self.realtime:
            for node in self.nodes:
                self._start_worker(node)

    def drain(self, timeout: float) -> bool:
        """Drive the nodes (virtual time) or wait for the threads (real time)."""
        if self.realtime:
            return wait_for(lambda: self.live() == 0, timeout=timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.live() == 0:
                return True
            self.step()
        return self.live() == 0

    def run_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Drive the virtual deployment (or wait for the threads) until ``predicate`` holds."""
        if self.realtime:
            return wait_for(predicate, timeout=timeout)
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return False
            self.step()
        return True

    def step(self) -> None:
        """One round of the virtual deployment: due jobs on every node, time, the rescuers."""
        for index in range(len(self.nodes)):
            node = self.nodes[index]
            try:
                node.backend.run_due(node.engine, max_jobs=100_000)
            except WorkerKilled:
                self.restart(index)
        assert isinstance(self.clock, VirtualClock)
        self.clock.advance(TICK)
        for node in self.nodes:
            try:
                node.engine.rescue()
            except Exception:  # a worker's tick logs and goes on, as MemoryWorker's does
                _log.warning("rescue failed", exc_info=True)

    def stop(self) -> None:
        """Stop worker threads, waiting for running jobs."""
        for node in self.nodes:
            if node.worker is not None:
                node.worker.stop(timeout=60)
                node.worker = None
        self.running = False

    def shutdown(self, *, graceful: bool = True) -> None:
        """Stop every worker (waiting for running jobs unless not ``graceful``); the queue ends."""
        self.inject("sigterm" if graceful else "cold shutdown", post_accept=not graceful)
        for node in self.nodes:
            if node.worker is not None:
                node.worker.stop(timeout=60 if graceful else 0)
        self.running = False

    def finish_shutdown(self) -> None:
        """Join threads a cold shutdown left running, then replace every node (a new process)."""
        for node in self.nodes:
            if node.worker is not None:
                node.worker.stop(timeout=60)
                node.worker = None
        for index in range(len(self.nodes)):
            self.restart(index)

    def restart_after_shutdown(self) -> None:
        """New processes: fresh nodes (their queues were lost with the old ones), started."""
        self.finish_shutdown()
        self.start()

    def lose_queue(self) -> None:
        """Every node dies with its queue (a restart of every process)."""
        self.inject("memory queues lost")
        for index in range(len(self.nodes)):
            self.restart(index)

    def duplicate(self, ids: Sequence[UUID], copies: int) -> None:
        """Every node queues a job for each delivery (each node's queue dedupes its own)."""
        for node in self.nodes:
            node.backend.enqueue_many(list(ids))

    def hostile_jobs(self, canary: Path, target: UUID) -> list[str]:
        """The memory queue takes UUIDs only: anything else is refused at enqueue.

        It has no serialized form, so there is no pickle to push; an unknown
        delivery id is acknowledged as not found.
        """
        pushed = []
        backend = self.nodes[0].backend
        for bad in ("not-a-uuid", str(target), target.hex, 12345, None, target.bytes):
            try:
                backend.enqueue(bad)  # type: ignore[arg-type]
            except TypeError:
                pushed.append(f"refused at enqueue: {type(bad).__name__}")
            else:
                self.problem(None, f"the memory queue accepted a {type(bad).__name__} job")
        backend.enqueue(uuid.uuid4())
        pushed.append("an unknown delivery id")
        return pushed

    def close(self) -> None:
        """Stop the threads, close connections."""
        self.stop()
        for node in self.nodes:
            node.engine.store.engine.dispose()


# ------------------------------------------------------------------------ processes


class ProcessDeployment(Deployment):
    """Real worker processes, restarted when they die (a supervisor's job)."""

    def __init__(self, settings: Settings, db: Engine, *, workers: int) -> None:
        super().__init__(settings, db)
        self.clock = SystemClock()
        self.count = workers
        self.processes: list[subprocess.Popen[bytes]] = []
        self.supervising = False
        self.spawned = 0

    @staticmethod
    def direct(settings: Settings) -> Settings:
        """The producer's settings: it reaches the database directly, never through a proxy."""
        return settings.evolve(db_url=settings.admin_db_url)

    @abc.abstractmethod
    def command(self) -> list[str]:
        """How to start one worker."""

    @abc.abstractmethod
    def ready(self) -> bool:
        """Whether every worker is ready."""

    def env(self) -> dict[str, str]:
        """The environment of a worker process."""
        return {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
            **self.settings.env(),
        }

    def log_paths(self) -> list[Path]:
        """Every worker's log file."""
        return sorted(self.files.directory.glob("worker-*.log"))

    def _spawn(self) -> subprocess.Popen[bytes]:
        path = self.files.directory / f"worker-{self.spawned}.log"
        self.spawned += 1
        with path.open("ab") as log:
            return subprocess.Popen(
                self.command(),
                cwd=ROOT,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start(self) -> None:
        """Start the workers and wait until they are ready."""
        self.processes = [self._spawn() for _ in range(self.count)]
        self.supervising = True
        if not wait_for(self.ready, timeout=60, interval=0.1):
            tail = "\n".join(p.read_text()[-2000:] for p in self.log_paths())
            raise AssertionError(f"{self.name} workers not ready after 60 s:\n{tail}")

    def supervise(self) -> None:
        """Start again any worker process that died."""
        if not self.supervising:
            return
        for index, process in enumerate(self.processes):
            if process.poll() is not None:
                self.restarts += 1
                self.processes[index] = self._spawn()

    def drain(self, timeout: float) -> bool:
        """Poll the ledger until no delivery is live, supervising the workers."""

        def done() -> bool:
            self.supervise()
            return self.live() == 0

        return wait_for(done, timeout=timeout, interval=0.1)

    def signal_all(self, signum: int) -> None:
        """Send ``signum`` to every worker's main process."""
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signum)

    def wait_exited(self, timeout: float) -> bool:
        """Wait until every worker's main process has exited."""
        return wait_for(
            lambda: all(process.poll() is not None for process in self.processes),
            timeout=timeout,
            interval=0.1,
        )

    def stop(self) -> None:
        """SIGTERM, then SIGKILL of each worker's process group after 30 s."""
        self.supervising = False
        self.signal_all(signal.SIGTERM)
        self.wait_exited(30)
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        self.processes = []

    def restart_after_shutdown(self) -> None:
        """Start new worker processes."""
        self.start()

    #: The signals a graceful shutdown sends every worker, 0.1 s apart.
    graceful_signals: tuple[int, ...] = (signal.SIGTERM,)
    #: The signals a cold shutdown sends every worker, 0.1 s apart.
    cold_signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGTERM)
    #: Whether a process left in a worker's group after its main process exited is a problem.
    children_must_exit = True

    def shutdown(self, *, graceful: bool = True) -> None:
        """Send the shutdown's signals and wait until every worker has exited."""
        self.supervising = False
        self.inject("sigterm" if graceful else "cold shutdown", post_accept=not graceful)
        for index, signum in enumerate(self.graceful_signals if graceful else self.cold_signals):
            if index:
                time.sleep(0.1)
            self.signal_all(signum)
        if not self.wait_exited(60):
            self.problem(None, "a worker did not exit within 60 s of SIGTERM")
        if not self.children_must_exit:
            return
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 0)
                # The main process is gone; a child left behind would be a leak.
                os.killpg(process.pid, signal.SIGKILL)
                self.problem(None, "a worker's child outlived its shutdown")

    def close(self) -> None:
        """Stop the workers, release connections, clean the broker."""
        super().close()
        self.cleanup()

    @abc.abstractmethod
    def cleanup(self) -> None:
        """Remove the run's queue from the broker."""


class PickleCanary:
    """Unpickling this creates the file at ``path``: proof that a pickle payload ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, ...]:
        """Rebuild as ``Path.touch(path)``."""
        return (Path.touch, (self.path,))


def tampered_arguments(target: UUID) -> list[tuple[tuple[object, ...], dict[str, object], str]]:
    """Job arguments that are not one canonical delivery id, each naming a real delivery."""
    real = str(target)
    return [
        ((real, "extra"), {}, "a second argument"),
        ((real,), {"delivery_id": real}, "a keyword argument"),
        (("not-a-uuid",), {}, "not a UUID"),
        ((target.hex,), {}, "a non-canonical UUID"),
        ((real[:-1] + "\x00",), {}, "a NUL character"),
        (("x" * 100_000,), {}, "a 100 kB string"),
        (([real],), {}, "a list"),
        (({"id": real},), {}, "an object"),
        ((), {}, "no argument"),
    ]


def scan_redis(client: Any, needle: bytes) -> list[str]:
    """The keys of ``client``'s database whose values contain ``needle``."""
    found = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        if kind == "string":
            values = [client.get(key)]
        elif kind == "hash":
            values = list(client.hgetall(key).values())
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        elif kind in {"set"}:
            values = list(client.smembers(key))
        elif kind == "zset":
            values = client.zrange(key, 0, -1)
        elif kind == "stream":
            values = [v for _, fields in client.xrange(key) for v in fields.values()]
        else:
            values = []
        if any(needle in (value or b"") for value in values):
            found.append(key.decode(errors="replace"))
    return found


def _redis_url(db: int) -> str:
    from tests.services import REDIS_URL

    return f"{REDIS_URL.rsplit('/', 1)[0]}/{db}"


class RQDeployment(ProcessDeployment):
    """Forking ``rq worker`` processes (``ChimewayWorker``) on Redis database 12.

    A shutdown is SIGTERM (warm: the horse finishes its job), or SIGTERM twice
    (cold: it is killed).
    """

    children_must_exit = False

    def __init__(self, settings: Settings, db: Engine, *, workers: int = 2) -> None:
        import redis

        from chimeway_backends.rq import RQBackend

        settings = settings.evolve(redis_url=_redis_url(RQ_REDIS_DB))
        super().__init__(settings, db, workers=workers)
        self.name = "rq"
        self.redis = redis.Redis.from_url(settings.redis_url)
        self.redis.flushdb()
        self.backend = RQBackend(self.redis, settings.queue, job_timeout=settings.job_timeout)
        self.producer = make_engine(self.direct(settings), self.backend, NoHooks())

    def command(self) -> list[str]:
        """The documented invocation, with chimeway's forking worker class."""
        return [
            RQ_CLI,
            "worker",
            "--url",
            self.settings.redis_url,
            "-w",
            "tests.faults.rq_app.SabotagedWorker"
            if self.settings.sabotage
            else "chimeway_backends.rq.ChimewayWorker",
            "--with-scheduler",
            "--serializer",
            "rq.serializers.DefaultSerializer"
            if "pickle-on" in self.settings.sabotage
            else "rq.serializers.JSONSerializer",
            self.settings.queue,
        ]

    def env(self) -> dict[str, str]:
        """The worker's environment: the engine's import path and the rescue interval."""
        return {
            **super().env(),
            "CHIMEWAY_APP": "tests.faults.rq_app:engine",
            "CHIMEWAY_RESCUE_INTERVAL": str(self.settings.rescue_interval),
        }

    def ready(self) -> bool:
        """Every worker registered on the queue."""
        import rq

        return len(rq.Worker.all(queue=self.backend.queue)) >= self.count

    def lose_queue(self) -> None:
        """FLUSHDB: every queued, scheduled and started job is gone."""
        self.inject("redis flushdb")
        self.redis.flushdb()

    def duplicate(self, ids: Sequence[UUID], copies: int) -> None:
        """Enqueue again (deduplicated) and push raw copies of each job id."""
        from chimeway_core.jobs import job_id_for

        for delivery_id in ids:
            self.backend.enqueue(delivery_id)
            self.redis.rpush(self.backend.queue.key, *[job_id_for(delivery_id)] * copies)

    def hostile_jobs(self, canary: Path, target: UUID) -> list[str]:
        """A pickled job, tampered arguments, another function, no job, a job hash of garbage."""
        import rq
        from rq.serializers import DefaultSerializer

        from chimeway_backends.rq import deliver

        queue = self.backend.queue
        pickled = rq.Queue(queue.name, connection=self.redis, serializer=DefaultSerializer)
        pickled.enqueue_call("chimeway_backends.rq.deliver", args=(PickleCanary(canary),))
        pushed = ["a pickled job whose argument creates a file"]
        for args, kwargs, what in tampered_arguments(target):
            queue.enqueue_call(deliver, args=args, kwargs=kwargs)
            pushed.append(what)
        queue.enqueue_call("os.mkdir", args=(str(canary.with_name(FOREIGN_CANARY)),))
        pushed.append("a job naming another function")
        self.redis.rpush(queue.key, "no-such-job")
        pushed.append("a job id with no job")
        garbage = "faults-garbage"
        self.redis.hset(
            f"rq:job:{garbage}",
            mapping={"data": b"\x00\xff{garbage", "status": "queued", "origin": queue.name},
        )
        self.redis.rpush(queue.key, garbage)
        pushed.append("a job hash of garbage")
        return pushed

    def hostile_settled(self, pushed: Sequence[str]) -> bool:
        """The queue is empty and no job is running."""
        queue = self.backend.queue
        return queue.count == 0 and queue.started_job_registry.count == 0

    def broker_sightings(self, needle: bytes) -> list[str]:
        """Redis keys (job hashes, results, failures) holding ``needle``."""
        return scan_redis(self.redis, needle)

    def cleanup(self) -> None:
        """FLUSHDB (the database is the suite's own) and close the connection."""
        self.redis.flushdb()
        self.redis.close()


class CeleryDeployment(ProcessDeployment):
    """One ``celery worker`` process (prefork, two children) on Redis or RabbitMQ.

    On RabbitMQ the worker reaches the broker through a :class:`TcpProxy`, so
    :meth:`lose_queue` can drop its connections. A shutdown is SIGTERM (warm),
    or SIGQUIT (cold); no pool child may outlive it.
    """

    cold_signals = (signal.SIGQUIT,)

    def __init__(self, settings: Settings, db: Engine, *, broker: str, workers: int = 1) -> None:
        from celery import Celery

        from chimeway_backends.celery import CeleryBackend
        from tests.services import RABBITMQ_URL

        self.broker = broker
        self.rabbitmq: RabbitMQRoute | None = None
        if broker == "redis":
            url = _redis_url(CELERY_REDIS_DB)
            options: dict[str, Any] = {"global_keyprefix": f"{settings.queue}:"}
            worker_url = url
        else:
            url = RABBITMQ_URL
            options = {"confirm_publish": True}
            queues = (settings.queue, urgent_queue(settings.queue))
            self.rabbitmq = RabbitMQRoute(url, queues)
            worker_url = self.rabbitmq.worker_url
        settings = settings.evolve(broker_url=worker_url, transport_options=options)
        super().__init__(settings, db, workers=workers)
        self.name = f"celery-{broker}"
        app = Celery(f"chimeway-faults-{settings.queue}", broker=url, set_as_current=False)
        app.conf.update(
            broker_transport_options=dict(options),
            broker_connection_retry_on_startup=True,
            task_default_queue=settings.queue,
        )
        self.app = app
        self.producer = make_engine(
            self.direct(settings),
            CeleryBackend(app, queue=settings.queue, rescue_interval=None),
            NoHooks(),
        )
        if broker == "redis":
            self._redis().flushdb()

    def _redis(self) -> Any:
        import redis

        return redis.Redis.from_url(_redis_url(CELERY_REDIS_DB))

    def command(self) -> list[str]:
        """``celery -A tests.faults.celery_app worker`` with the recommended options."""
        queue = self.settings.queue
        return [
            *(sys.executable, "-m", "celery", "-A", "tests.faults.celery_app", "worker"),
            *(
                "--pool",
                "prefork",
                "--concurrency",
                "2",
                "--queues",
                f"{queue},{urgent_queue(queue)}",
            ),
            *("--prefetch-multiplier", "1", "--loglevel", "INFO"),
            *("--without-gossip", "--without-mingle", "--without-heartbeat"),
            *("--hostname", f"{queue}-{self.spawned}@%h"),
        ]

    def ready(self) -> bool:
        """Every worker logged that it is ready."""
        return sum(" ready." in path.read_text() for path in self.log_paths()) >= self.count

    def lose_queue(self) -> None:
        """Redis: FLUSHDB. RabbitMQ: drop every connection of the worker, then purge its queues."""
        if self.rabbitmq is not None:
            self.rabbitmq.lose(self)
        else:
            self.inject("redis flushdb")
            client = self._redis()
            client.flushdb()
            client.close()

    def duplicate(self, ids: Sequence[UUID], copies: int) -> None:
        """Celery never deduplicates: enqueue each delivery ``copies`` more times."""
        for _ in range(copies):
            self.producer.backend.enqueue_many(list(ids))

    def hostile_jobs(self, canary: Path, target: UUID) -> list[str]:
        """A pickle message, tampered arguments, an unregistered task, a body of garbage."""
        from kombu import Connection, Producer  # type: ignore[attr-defined]  # kombu is untyped

        from chimeway_backends.celery import TASK_NAME

        app, queue_name = self.app, self.settings.queue
        queue = app.amqp.queues[queue_name]
        pushed = []
        options = dict(self.settings.transport_options)
        url = app.conf.broker_url
        with Connection(url, transport_options=options) as connection:  # type: ignore[no-untyped-call]
            producer = Producer(connection)  # type: ignore[no-untyped-call]
            headers, *_ = app.amqp.as_task_v2("faults-pickle", TASK_NAME, args=(), kwargs={})
            producer.publish(  # type: ignore[no-untyped-call]
                ((PickleCanary(canary),), {}, {}),
                serializer="pickle",
                exchange=queue.exchange,
                routing_key=queue.routing_key,
                headers=headers,
                declare=[queue],
            )
            pushed.append("a pickle message whose argument creates a file")
            headers, *_ = app.amqp.as_task_v2("faults-garbage", TASK_NAME, args=(), kwargs={})
            producer.publish(  # type: ignore[no-untyped-call]
                b"\x00\xff[garbage",
                content_type="application/json",
                content_encoding="utf-8",
                exchange=queue.exchange,
                routing_key=queue.routing_key,
                headers=headers,
                declare=[queue],
            )
            pushed.append("a body of garbage")
        for args, kwargs, what in tampered_arguments(target):
            app.send_task(TASK_NAME, args=args, kwargs=kwargs, queue=queue_name)
            pushed.append(what)
        app.send_task("os.mkdir", args=[str(canary.with_name(FOREIGN_CANARY))], queue=queue_name)
        pushed.append("an unregistered task")
        return pushed

    def hostile_settled(self, pushed: Sequence[str]) -> bool:
        """The worker logged each tampered job's failure and the refusals."""
        logged = "".join(path.read_text(errors="replace") for path in self.log_paths())
        tampered = len(tampered_arguments(uuid.uuid4()))
        return (
            logged.count("InvalidJobError") >= tampered
            and "unregistered task" in logged
            and ("ContentDisallowed" in logged or "Refusing to deserialize" in logged)
        )

    def watch_broker(self, needle: bytes) -> None:
        """RabbitMQ: look for ``needle`` in the worker's AMQP traffic (through the proxy)."""
        if self.rabbitmq is not None:
            self.rabbitmq.watch(needle)

    def broker_sightings(self, needle: bytes) -> list[str]:
        """Redis keys holding ``needle``; on RabbitMQ, the worker's AMQP traffic since watched."""
        if self.rabbitmq is not None:
            return self.rabbitmq.sightings()
        client = self._redis()
        try:
            return scan_redis(client, needle)
        finally:
            client.close()

    def cleanup(self) -> None:
        """Delete the run's queues (Redis: FLUSHDB) and stop the proxy."""
        if self.rabbitmq is not None:
            self.rabbitmq.close()
        else:
            client = self._redis()
            client.flushdb()
            client.close()
        self.app.close()


def new_queue(prefix: str = "faults-") -> str:
    """A queue name no other run uses, starting with ``prefix``."""
    return f"{prefix}{secrets.token_hex(5)}"
