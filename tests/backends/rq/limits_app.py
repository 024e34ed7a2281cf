"""Two channels whose job-timeout windows do not overlap, on one default RQBackend.

``CHIMEWAY_APP=tests.backends.rq.limits_app:engine``; configured from the
environment (``APP_*``), as :mod:`tests.backends.rq.worker_app` is. With a
lease margin of 2 s, ``quick`` (timeout 2 s, like the webhook channel's 100 s)
needs a job timeout in (2, 4] and ``slow`` (timeout 6 s, like SMTP's 300 s)
one in (6, 8]: no one ``job_timeout`` fits both.

The recipient scripts the call: ``ok-<seconds>`` sends after sleeping that
long; ``hang`` sleeps until stopped on its first attempt, then sends. Every
call appends a JSON line to ``APP_CALLS`` when it starts (``"event":
"call"``) and, when the job's time limit cuts it, one saying after how long
(``"event": "cut"``, ``"elapsed"``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import redis

from chimeway_backends.rq import RQBackend
from chimeway_core import ChannelResult, ErrorClass, RetryPolicy, Sent
from chimeway_core.channels.base import DeliveryGuarantee
from chimeway_core.engine import Chimeway
from chimeway_core.records import Delivery
from chimeway_core.store import SQLStore

#: Seconds added to a channel's timeout to make its lease.
LEASE_MARGIN = 2.0
#: Channel name -> timeout (seconds).
TIMEOUTS = {"quick": 2.0, "slow": 6.0}
RETRY = RetryPolicy(max_attempts=3, initial_delay=0.2, backoff_factor=1.0, jitter=0.0)


class ScriptedChannel:
    """Sleeps as the recipient says; logs each call and each cut to a shared file."""

    guarantee = DeliveryGuarantee.AT_LEAST_ONCE
    exception_class = ErrorClass.TEMPORARY

    def __init__(self, name: str, timeout: float, calls: Path) -> None:
        self.name = name
        self.timeout = timeout
        self.calls = calls

    def _log(self, delivery: Delivery, key: str, **fields: object) -> None:
        line = {
            "delivery": str(delivery.id),
            "channel": self.name,
            "key": key,
            "attempt": delivery.attempt_count,
            "pid": os.getpid(),
            "at": time.time(),
            **fields,
        }
        with self.calls.open("a") as log:
            log.write(json.dumps(line) + "\n")

    def send(self, delivery: Delivery, idempotency_key: str) -> ChannelResult:
        """Log the call, then sleep as scripted; log how long it ran if it is cut."""
        self._log(delivery, idempotency_key, event="call")
        kind, _, seconds = delivery.recipient.partition("-")
        if kind == "hang" and delivery.attempt_count > 1:
            return Sent()
        pause = 600.0 if kind == "hang" else float(seconds)
        started = time.monotonic()
        try:
            time.sleep(pause)
        except BaseException:
            self._log(delivery, idempotency_key, event="cut", elapsed=time.monotonic() - started)
            raise
        return Sent()


def build(*, db_url: str, redis_url: str, queue: str, calls: Path) -> Chimeway:
    """The engine every process of one test uses: one RQBackend with its defaults."""
    backend = RQBackend(redis.Redis.from_url(redis_url), queue)
    return Chimeway(
        SQLStore(db_url),
        backend,
        {name: ScriptedChannel(name, timeout, calls) for name, timeout in TIMEOUTS.items()},
        retry=RETRY,
        lease_margin=LEASE_MARGIN,
    )


def engine() -> Chimeway:
    """The engine of a worker subprocess, configured from ``APP_*`` environment variables."""
    env = os.environ
    return build(
        db_url=env["APP_DB_URL"],
        redis_url=env["APP_REDIS_URL"],
        queue=env["APP_QUEUE"],
        calls=Path(env["APP_CALLS"]),
    )
