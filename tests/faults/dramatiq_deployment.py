"""The fault suite's Dramatiq deployment: ``dramatiq`` worker processes on RabbitMQ.

Each worker is one ``dramatiq`` command with one process and one thread, so
a SIGKILL takes exactly one call with it, as a pool child's death does on
Celery and a work horse's on RQ (a ``dramatiq`` command stops every process
of its own when one dies). The workers reach RabbitMQ through a
:class:`~tests.faults.rabbitmq.RabbitMQRoute`, so :meth:`DramatiqDeployment.lose_queue`
can drop their connections; the test process's producer reaches it directly.
The run's queues are ``faults-dq-*``, with Dramatiq's delay (``.DQ``) and
dead-letter (``.XQ``) queues; every one is deleted at the end.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final
from uuid import UUID

from sqlalchemy import Engine

from tests.faults.app import Settings, make_engine, urgent_queue
from tests.faults.deployments import (
    FOREIGN_CANARY,
    NoHooks,
    PickleCanary,
    ProcessDeployment,
    tampered_arguments,
)
from tests.faults.rabbitmq import RabbitMQRoute

#: The prefix of every queue name the Dramatiq deployment uses.
QUEUE_PREFIX: Final = "faults-dq-"
#: What each ``dramatiq`` worker process logs once it consumes.
READY: Final = "Worker process is ready for action."


class DramatiqDeployment(ProcessDeployment):
    """``dramatiq`` commands of one process and one thread each, on RabbitMQ.

    A shutdown is SIGTERM (warm: a running actor finishes), or SIGTERM twice
    (cold: the worker process exits at once); no process may outlive it.
    """

    def __init__(self, settings: Settings, db: Engine, *, workers: int = 2) -> None:
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        from chimeway_backends.dramatiq import DramatiqBackend
        from tests.services import RABBITMQ_PIKA_URL, RABBITMQ_URL, pika_url

        queue, urgent = settings.queue, urgent_queue(settings.queue)
        self.rabbitmq = RabbitMQRoute(
            RABBITMQ_URL,
            [queue, f"{queue}.DQ", urgent, f"{urgent}.DQ"],
            leftovers=[f"{queue}.XQ", f"{urgent}.XQ"],
        )
        settings = settings.evolve(broker_url=pika_url(self.rabbitmq.worker_url))
        super().__init__(settings, db, workers=workers)
        self.name = "dramatiq-rabbitmq"
        broker = RabbitmqBroker(url=RABBITMQ_PIKA_URL, confirm_delivery=True)
        self.backend = DramatiqBackend(broker, queue=queue, rescue_interval=None)
        self.producer = make_engine(self.direct(settings), self.backend, NoHooks())

    def command(self) -> list[str]:
        """``dramatiq tests.faults.dramatiq_app:broker``, one process, one thread."""
        queue = self.settings.queue
        return [
            *(sys.executable, "-m", "dramatiq", "tests.faults.dramatiq_app:broker"),
            *("--processes", "1", "--threads", "1"),
            *("--queues", queue, urgent_queue(queue)),
        ]

    def env(self) -> dict[str, str]:
        """What the backend's page recommends: a worker holds only the message it runs."""
        return {**super().env(), "dramatiq_queue_prefetch": "1"}

    def ready(self) -> bool:
        """Every worker process logged that it is ready."""
        return sum(READY in path.read_text() for path in self.log_paths()) >= self.count

    def lose_queue(self) -> None:
        """Drop every connection of the workers, then purge the queues and delay queues."""
        self.rabbitmq.lose(self)

    def duplicate(self, ids: Sequence[UUID], copies: int) -> None:
        """Dramatiq never deduplicates: enqueue each delivery ``copies`` more times."""
        for _ in range(copies):
            self.producer.backend.enqueue_many(list(ids))

    def hostile_jobs(self, canary: Path, target: UUID) -> list[str]:
        """Tampered arguments, another actor, a pickle message and a body of garbage."""
        import dramatiq
        import pika

        from chimeway_backends.dramatiq import ACTOR_NAME

        queue, broker = self.settings.queue, self.backend.broker
        pushed = []
        for args, kwargs, what in tampered_arguments(target):
            broker.enqueue(dramatiq.Message(queue, ACTOR_NAME, args, kwargs, {}))
            pushed.append(what)
        foreign = (str(canary.with_name(FOREIGN_CANARY)),)
        broker.enqueue(dramatiq.Message(queue, "os.mkdir", foreign, {}, {}))
        pushed.append("a message naming another actor")
        fields = dramatiq.Message(queue, ACTOR_NAME, (), {}, {}).asdict()
        raw = {
            "a pickle message whose argument creates a file": pickle.dumps(
                {**fields, "args": (PickleCanary(canary),)}
            ),
            "a body of garbage": b"\x00\xff[garbage",
        }
        for what, body in raw.items():
            broker.channel.basic_publish(  # type: ignore[attr-defined]  # per-thread channel
                exchange="",
                routing_key=queue,
                body=body,
                properties=pika.BasicProperties(delivery_mode=2, priority=0),
            )
            pushed.append(what)
        return pushed

    def hostile_settled(self, pushed: Sequence[str]) -> bool:
        """The queue is empty and every hostile message is dead-lettered."""
        queue = self.settings.queue
        settled = self.rabbitmq.messages(queue) == 0
        return settled and self.rabbitmq.messages(f"{queue}.XQ") >= len(pushed)

    def watch_broker(self, needle: bytes) -> None:
        """Look for ``needle`` in the workers' AMQP traffic (through the proxy)."""
        self.rabbitmq.watch(needle)

    def broker_sightings(self, needle: bytes) -> list[str]:
        """The workers' AMQP traffic, if ``needle`` crossed it since watched."""
        return self.rabbitmq.sightings()

    def close(self) -> None:
        """Kill the workers outright (the run was checked already), then clean up.

        A warm stop of a ``dramatiq`` command takes seconds per scenario that
        nothing after the check needs.
        """
        self.supervising = False
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        super().close()

    def cleanup(self) -> None:
        """Delete the run's queues, stop the proxy, close the producer's broker."""
        self.rabbitmq.close()
        self.backend.broker.close()
