"""Fixtures for the Dramatiq backend's tests: real brokers, real workers, PostgreSQL as the ledger.

Each test gets a queue of its own (``dramatiq_`` and a random part); on
Redis (database :data:`REDIS_DB`) a key namespace of its own too. Every
trace is removed at the end. Every wait is a bounded poll.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import attrs
import dramatiq
import pytest
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker

from tests.backends._workers import BrokerSpec, redis_db_url
from tests.services import RABBITMQ_PIKA_URL, require

#: The Redis database the Dramatiq tests use (with a namespace per test).
REDIS_DB = 2
REDIS_BROKER_URL = redis_db_url(REDIS_DB)


@attrs.frozen
class Broker(BrokerSpec):
    """One broker for one test; on Redis the queue is its key namespace too."""

    @property
    def namespace(self) -> str:
        """The Redis key namespace (unused on RabbitMQ)."""
        return self.queue

    def make(self) -> dramatiq.Broker:
        """A new Dramatiq broker on this service, with Dramatiq's default middleware."""
        if self.name == "redis":
            return RedisBroker(url=self.url, namespace=self.namespace)  # type: ignore[no-untyped-call]
        return RabbitmqBroker(url=self.url, confirm_delivery=True)


def make_broker(name: str) -> Broker:
    """A :class:`Broker` on ``name`` (``redis`` or ``rabbitmq``) with a queue of its own."""
    require(name)
    queue = f"dramatiq_{secrets.token_hex(4)}"
    return Broker(name, REDIS_BROKER_URL if name == "redis" else RABBITMQ_PIKA_URL, queue)


def cleanup_broker(broker: Broker) -> None:
    """Remove every trace of ``broker``'s queue (on Redis, its whole namespace)."""
    if broker.name == "redis":
        client = redis.Redis.from_url(broker.url)
        try:
            keys = list(client.scan_iter(match=f"{broker.namespace}:*", count=500))
            if keys:
                client.delete(*keys)
        finally:
            client.close()
        return
    made = RabbitmqBroker(url=broker.url)
    try:
        for name in (broker.queue, f"{broker.queue}.DQ", f"{broker.queue}.XQ"):
            made.channel.queue_delete(name)
    finally:
        made.close()


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    """Each broker in turn, with a queue of this test's own; cleaned up after."""
    spec = make_broker(request.param)
    yield spec
    cleanup_broker(spec)
