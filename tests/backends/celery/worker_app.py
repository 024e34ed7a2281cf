"""A chimeway application for real ``celery worker`` processes, scripted by recipient.

The tests copy this file into a temporary directory as ``chimeway_worker_app``
and start ``celery -A chimeway_worker_app worker`` on it. The engine and its
scripted channel are :mod:`tests.backends.scripted_app`'s;
``CHIMEWAY_TEST_TRANSPORT`` holds the broker's transport options and
``CHIMEWAY_TEST_CONF`` further Celery settings (both JSON objects).
"""

from __future__ import annotations

import json
import os

from celery import Celery

from chimeway_backends.celery import CeleryBackend
from tests.backends.scripted_app import BROKER_URL, QUEUE, RESCUE_INTERVAL, scripted_engine

celery_app = Celery("chimeway_worker_app", broker=BROKER_URL)
celery_app.conf.update(
    broker_transport_options=json.loads(os.environ.get("CHIMEWAY_TEST_TRANSPORT", "{}")),
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
    worker_enable_remote_control=False,
    task_default_queue=QUEUE,
)
# Settings a test adds (JSON), such as one that lets the task take pickle.
celery_app.conf.update(json.loads(os.environ.get("CHIMEWAY_TEST_CONF", "{}")))
backend = CeleryBackend(
    celery_app,
    queue=QUEUE,
    engine="chimeway_worker_app:engine",
    rescue_interval=RESCUE_INTERVAL,
)
engine = scripted_engine(backend)
