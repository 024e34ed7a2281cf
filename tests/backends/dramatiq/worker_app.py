"""A chimeway application for real ``dramatiq`` worker processes, scripted by recipient.

The tests copy this file into a temporary directory as ``chimeway_worker_app``
and start ``dramatiq chimeway_worker_app:broker`` (or ``chimeway worker
--backend dramatiq --app chimeway_worker_app:engine``) on it. The engine and
its scripted channel are :mod:`tests.backends.scripted_app`'s;
``CHIMEWAY_TEST_BROKER_KIND`` says which broker (``redis`` or ``rabbitmq``),
and on Redis the queue is the key namespace too.
"""

from __future__ import annotations

import os

from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker

from chimeway_backends.dramatiq import DramatiqBackend
from tests.backends.scripted_app import BROKER_URL, QUEUE, RESCUE_INTERVAL, scripted_engine

# On Redis a dead worker's messages come back once it has missed its heartbeats for
# heartbeat_timeout and a live worker's maintenance runs: both made quick here.
broker = (
    RedisBroker(url=BROKER_URL, namespace=QUEUE, heartbeat_timeout=3000, maintenance_chance=100_000)
    if os.environ["CHIMEWAY_TEST_BROKER_KIND"] == "redis"
    else RabbitmqBroker(url=BROKER_URL, confirm_delivery=True)
)
backend = DramatiqBackend(
    broker,
    queue=QUEUE,
    engine="chimeway_worker_app:engine",
    rescue_interval=RESCUE_INTERVAL,
)
engine = scripted_engine(backend)
