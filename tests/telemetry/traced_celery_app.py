"""The traced application of :mod:`tests.telemetry.traced_app`, for ``celery -A`` workers."""

from __future__ import annotations

import os
from pathlib import Path

from celery import Celery

from chimeway_backends.celery import CeleryBackend
from tests.telemetry.traced_app import build, traced_telemetry

QUEUE = os.environ["TRACED_QUEUE"]

celery_app = Celery("traced_celery_app", broker=os.environ["TRACED_BROKER"])
celery_app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
    worker_enable_remote_control=False,
    task_default_queue=QUEUE,
)
backend = CeleryBackend(celery_app, queue=QUEUE, engine="tests.telemetry.traced_celery_app:engine")
engine = build(backend, os.environ["TRACED_DB"], traced_telemetry(Path(os.environ["TRACED_SPANS"])))
