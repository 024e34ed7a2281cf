"""The fault suite's Dramatiq worker application: ``dramatiq tests.faults.dramatiq_app:broker``.

Built at import from ``FAULTS_SETTINGS``, as ``dramatiq`` needs the broker.
The worker consumes the run's queue and its urgent queue, which only
redeliveries fill (see :func:`~tests.faults.app.urgent_queue`).
"""

from __future__ import annotations

from uuid import UUID

from dramatiq.brokers.rabbitmq import RabbitmqBroker

from chimeway_backends.dramatiq import DramatiqBackend
from tests.faults import sabotage
from tests.faults.app import Settings, urgent_queue, worker_backend_options, worker_engine

settings = Settings.from_env()
sabotage.apply(settings.sabotage)

broker = RabbitmqBroker(url=settings.broker_url, confirm_delivery=True)
broker.declare_queue(urgent_queue(settings.queue))
backend = DramatiqBackend(broker, **worker_backend_options(settings, __name__))


def _push_duplicate(delivery_id: UUID) -> None:
    # Dramatiq never deduplicates: a second message with the same id, on the queue
    # nothing else fills, so an idle worker takes it at once.
    backend.send(delivery_id, at=None, queue=urgent_queue(settings.queue))


engine = worker_engine(settings, backend, _push_duplicate)
