"""The scripted application half every backend's real worker processes share.

A backend's ``worker_app.py`` (copied into a temporary directory as
``chimeway_worker_app``) builds its queue's side and hands its backend to
:func:`scripted_engine`. Everything comes from the environment
(``CHIMEWAY_TEST_*``), read when this module is imported, in a worker
process only. The channel's result is decided by the recipient's prefix
and the attempt number:

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

import os
import signal
import time
from pathlib import Path

from chimeway_core import Bounced, PermanentFailure, RetryPolicy, Sent, TemporaryFailure
from chimeway_core.backend import Backend
from chimeway_core.engine import Chimeway
from chimeway_core.outcomes import ChannelResult
from chimeway_core.records import Delivery
from chimeway_core.store import SQLStore
from chimeway_core.testing import FakeChannel

WORK = Path(os.environ["CHIMEWAY_TEST_DIR"])
MARKERS = WORK / "markers"
QUEUE = os.environ["CHIMEWAY_TEST_QUEUE"]
BROKER_URL = os.environ["CHIMEWAY_TEST_BROKER"]
RESCUE_INTERVAL = float(os.environ.get("CHIMEWAY_TEST_RESCUE_INTERVAL", "0.5"))
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


def scripted_engine(backend: Backend) -> Chimeway:
    """The worker's engine on ``backend``: the scripted channel, the test's ledger."""
    return Chimeway(
        SQLStore(os.environ["CHIMEWAY_TEST_DB"]),
        backend,
        {"scripted": LoggingChannel(_script, timeout=CHANNEL_TIMEOUT)},
        retry=RETRY,
        lease_margin=LEASE_MARGIN,
    )
