"""The suite's RabbitMQ as the workers of a deployment reach it: through a proxy the test cuts.

Celery's and Dramatiq's deployments on RabbitMQ share it. The workers get
:attr:`RabbitMQRoute.worker_url`, a :class:`~tests.faults.proxy.TcpProxy` in
front of the broker, so :meth:`RabbitMQRoute.lose` can drop every
connection they hold and every message they publish or consume can be
searched for a secret; the test process reaches the broker directly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import make_url

from tests.faults.proxy import TcpProxy

if TYPE_CHECKING:
    from tests.faults.deployments import Deployment


class RabbitMQRoute:
    """The workers' connection to RabbitMQ at ``url`` and the run's queues there.

    ``queues`` are purged when the queue is lost; they and ``leftovers``
    (dead-letter queues, say) are deleted at :meth:`close`.
    """

    def __init__(self, url: str, queues: Sequence[str], *, leftovers: Sequence[str] = ()) -> None:
        parsed = make_url(url.replace("amqp://", "postgresql://", 1))
        port = parsed.port or 5672
        self.url = url
        self.proxy = TcpProxy((parsed.host or "127.0.0.1", port))
        self.worker_url = url.replace(f":{port}", f":{self.proxy.port}", 1)
        self.queues = tuple(queues)
        self.leftovers = tuple(leftovers)

    def lose(self, deployment: Deployment) -> None:
        """Drop every connection of the workers, then purge the run's queues.

        RabbitMQ requeues what a dropped connection held unacknowledged; the
        purge then loses it with everything else that was waiting.
        """
        deployment.inject("rabbitmq connections dropped")
        before = self.proxy.dropped
        self.proxy.drop()
        if self.proxy.dropped == before:
            deployment.problem(None, "no broker connection to drop: the worker bypassed the proxy")
        purged = self._each(self.queues, lambda channel, queue: channel.queue_purge(queue))
        deployment.inject(f"rabbitmq queues purged ({sum(filter(None, purged))} messages)")

    def watch(self, needle: bytes) -> None:
        """Look for ``needle`` in the workers' AMQP traffic from now on."""
        self.proxy.watch(needle)

    def sightings(self) -> list[str]:
        """The workers' AMQP traffic, if ``needle`` crossed the proxy since :meth:`watch`.

        Every message a worker consumes or publishes crosses the proxy, so a
        secret in any job message, retry included, is seen there.
        """
        seen = self.proxy.sightings
        return [f"the worker's AMQP traffic ({seen} connection directions)"] if seen else []

    def messages(self, queue: str) -> int:
        """How many messages wait in ``queue`` (0 if it is not declared)."""
        declared = self._each(
            [queue], lambda channel, name: channel.queue_declare(name, passive=True)
        )
        return int(declared[0].message_count) if declared else 0

    def close(self) -> None:
        """Delete the run's queues and stop the proxy."""
        self._each(
            [*self.queues, *self.leftovers], lambda channel, queue: channel.queue_delete(queue)
        )
        self.proxy.close()

    def _each(self, queues: Sequence[str], action: Callable[[Any, str], Any]) -> list[Any]:
        """``action(channel, queue)`` on each of ``queues``, directly; skips undeclared ones."""
        from kombu import Connection  # type: ignore[attr-defined]  # kombu is untyped

        results = []
        with Connection(self.url) as connection:  # type: ignore[no-untyped-call]
            for queue in queues:
                # A channel per queue: a queue not declared yet closes the channel it was asked on.
                channel = connection.channel()
                with contextlib.suppress(Exception):
                    results.append(action(channel, queue))
                with contextlib.suppress(Exception):
                    channel.close()
        return results
