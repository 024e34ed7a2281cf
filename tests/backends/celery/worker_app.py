"""A chimeway application for real ``celery worker`` processes, scripted by recipient.

The tests copy this file into a temporary directory as ``chimeway_worker_app``
and start ``celery -A chimeway_worker_app worker`` on it. Everything it needs
comes from the environment (``CHIMEWAY_TEST_*``; ``CHIMEWAY_TEST_CONF``
is a JSON object of further Celery settings). The channel's result is
decided by the recipient's prefix and the attempt number:

- ``ok-*``: sent; ``temp2-*``: two temporary failures, then sent;
  ``perm-*``: permanent failure; ``bounce-*``: bounced;
  ``exhaust-*``: always a temporary failure;
- ``slow-*``: sleeps ``CHIMEWAY_TEST_SLOW`` seconds, then sent;
- ``killonce-*``: on attempt 1 writes a marker file naming its process and
  sleeps (the test SIGKILLs that process); sent on later attempts;
- ``killalways-*``: writes a marker, then SIGKILLs its own process.

Every call appends ``delivery_id idempotency_key attempt pid`` to
``calls.log`` in ``CHIMEWAY_TEST_DIR``.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from celery import Celery

from chimeway_backends.celery import CeleryBackend
from chimeway_core import Bounced, PermanentFailure, RetryPolicy, Sent, TemporaryFailure
from chimeway_core.engine import Chimeway
from chimeway_core.outcomes import ChannelResult
from chimeway_core.records import Delivery
from chimeway_core.store import SQLStore
from chimeway_core.testing import FakeChannel

WORK = Path(os.environ["CHIMEWAY_TEST_DIR"])
MARKERS = WORK / "markers"
QUEUE = os.environ["CHIMEWAY_TEST_QUEUE"]
SLOW = float(os.environ.get("CHIMEWAY_TEST_SLOW", "3"))

#: 0.2 s, doubling, no jitter, three attempts: what the tests expect.
RETRY = RetryPolicy(max_attempts=3, initial_delay=0.2, backoff_factor=2.0, jitter=0.0, max_delay=2)
#: The channel's timeout: with the lease margin, a killed call's lease lasts 4 s.
CHANNEL_TIMEOUT = 3.0
LEASE_MARGIN = 1.0


def _script(delivery: Delivery) -> object:
    kind = delivery.recipient.split("-", 1)[0]
    attempt = delivery.attempt_count
    if kind in {"killonce", "killalways"} and (kind == "killalways" or attempt == 1):
        MARKERS.mkdir(exist_ok=True)
        (MARKERS / f"{delivery.id}.{attempt}.{os.getpid()}").touch()
        if kind == "killalways":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(30)  # the test kills this process long before
    if kind == "slow":
        time.sleep(SLOW)
    results: dict[str, object] = {
        "temp2": TemporaryFailure("busy") if attempt <= 2 else Sent(),
        "perm": PermanentFailure("rejected"),
        "bounce": Bounced("no mailbox"),
        "exhaust": TemporaryFailure("down"),
    }
    return results.get(kind, Sent())


class LoggingChannel(FakeChannel):
    """A FakeChannel that also appends each call to ``calls.log`` (the test reads it)."""

    def send(self, delivery: Delivery, idempotency_key: str) -> ChannelResult:
        """Log the call, then play the script."""
        line = f"{delivery.id} {idempotency_key} {delivery.attempt_count} {os.getpid()}\n"
        with (WORK / "calls.log").open("a") as log:
            log.write(line)
        return super().send(delivery, idempotency_key)


celery_app = Celery("chimeway_worker_app", broker=os.environ["CHIMEWAY_TEST_BROKER"])
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
    rescue_interval=float(os.environ.get("CHIMEWAY_TEST_RESCUE_INTERVAL", "0.5")),
)
engine = Chimeway(
    SQLStore(os.environ["CHIMEWAY_TEST_DB"]),
    backend,
    {"scripted": LoggingChannel(_script, timeout=CHANNEL_TIMEOUT)},
    retry=RETRY,
    lease_margin=LEASE_MARGIN,
)
