"""The Dramatiq backend in chimeway's test suites: a worker in this process on a scratch queue.

:class:`DramatiqHarness` is the conformance suite's and the stateful
machine's harness for Dramatiq (:mod:`chimeway_core.testing.conformance`),
and :func:`open_harness` is what ``chimeway selftest --app`` opens on an
application's own broker: a broker of its own (chimeway's backend is one per
broker) with the connection of the application's and Dramatiq's default
middleware, a queue of its own, and a real :class:`dramatiq.Worker`
consuming it in threads of this process. Every trace of the queue is removed
at the end (:func:`purge`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dramatiq
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker

from chimeway_backends.dramatiq.backend import DramatiqBackend
from chimeway_core.backend import Backend
from chimeway_core.store import SQLStore
from chimeway_core.testing.conformance import EngineFactory, RealTimeHarness

__all__ = ["DramatiqHarness", "open_harness", "purge", "scratch_broker", "worker_for"]


class DramatiqHarness(RealTimeHarness):
    """An engine on a DramatiqBackend whose embedded worker runs meanwhile."""


def scratch_broker(broker: dramatiq.Broker) -> dramatiq.Broker:
    """A new broker of ``broker``'s kind and connection, with Dramatiq's default middleware."""
    if isinstance(broker, RedisBroker):
        pool = broker.client.connection_pool
        client = redis.Redis(
            connection_pool=redis.ConnectionPool(
                connection_class=pool.connection_class, **pool.connection_kwargs
            )
        )
        return RedisBroker(client=client, namespace=broker.namespace)  # type: ignore[no-untyped-call]
    if isinstance(broker, RabbitmqBroker):
        scratch = RabbitmqBroker(confirm_delivery=broker.confirm_delivery)
        scratch.parameters = broker.parameters
        return scratch
    raise TypeError(f"no scratch broker for a {type(broker).__name__}")


def purge(broker: dramatiq.Broker, queue: str) -> None:
    """Delete ``queue`` from ``broker``, with its delay and dead-letter queues."""
    if isinstance(broker, RedisBroker):
        keys = [
            *broker.client.scan_iter(match=f"{broker.namespace}:{queue}*", count=500),
            *broker.client.scan_iter(match=f"{broker.namespace}:__acks__.*.{queue}*", count=500),
        ]
        if keys:
            broker.client.delete(*keys)
    elif isinstance(broker, RabbitmqBroker):
        channel = broker.channel
        for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
            channel.queue_delete(name)


@contextmanager
def worker_for(backend: DramatiqBackend, *, threads: int = 2) -> Iterator[dramatiq.Worker]:
    """A real worker of ``backend``'s broker on its queue, in threads; stopped at the end."""
    backend.middleware.boot_process()
    worker = dramatiq.Worker(backend.broker, queues={backend.queue}, worker_threads=threads)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop(timeout=30_000)


@contextmanager
def open_harness(
    backend: Backend,
    store: SQLStore,
    engine_factory: EngineFactory,
    queue: str,
    *,
    time_limit: float,
) -> Iterator[DramatiqHarness]:
    """A :class:`DramatiqHarness` on ``backend``'s broker and the scratch ``queue``.

    The worker never rescues on its own (the tests do). ``time_limit``
    (seconds) is the chimeway actor's Dramatiq time limit. The queue, its
    delay and dead-letter queues are deleted from the broker at the end.
    """
    assert isinstance(backend, DramatiqBackend)
    broker = scratch_broker(backend.broker)
    scratch = DramatiqBackend(
        broker, queue=queue, rescue_interval=None, error_retry_delay=1.0, time_limit=time_limit
    )
    engine = engine_factory(store, scratch)
    scratch.bind(engine)
    try:
        with worker_for(scratch):
            yield DramatiqHarness(engine)
    finally:
        purge(broker, queue)
        broker.close()
