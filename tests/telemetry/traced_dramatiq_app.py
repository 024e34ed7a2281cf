"""The traced application of :mod:`tests.telemetry.traced_app`, for ``dramatiq`` workers.

``dramatiq tests.telemetry.traced_dramatiq_app:broker --queues $TRACED_QUEUE``
runs it: a RabbitMQ broker at ``TRACED_BROKER`` (as pika reads the URL).
"""

from __future__ import annotations

import os
from pathlib import Path

from dramatiq.brokers.rabbitmq import RabbitmqBroker

from chimeway_backends.dramatiq import DramatiqBackend
from tests.telemetry.traced_app import build, traced_telemetry

QUEUE = os.environ["TRACED_QUEUE"]

broker = RabbitmqBroker(url=os.environ["TRACED_BROKER"], confirm_delivery=True)
backend = DramatiqBackend(
    broker, queue=QUEUE, engine="tests.telemetry.traced_dramatiq_app:engine", rescue_interval=None
)
engine = build(backend, os.environ["TRACED_DB"], traced_telemetry(Path(os.environ["TRACED_SPANS"])))
