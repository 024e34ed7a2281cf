"""The application RQ worker subprocesses run: ``CHIMEWAY_APP=tests.backends.rq.worker_app:engine``.

``engine`` is a zero-argument factory reading its configuration from the
environment (``APP_*``, see :func:`engine`); the test process builds the same
engine with :func:`build`. The channel's results are scripted by the
recipient, deterministically, so every process agrees on them:

- ``mix-<n>``: by ``n % 5`` — sent; temporary then sent; always temporary
  (exhausts at three attempts); permanent; bounced (see :data:`EXPECTED`).
- ``block-<n>``: the first attempt writes ``<markers>/<delivery id>`` holding
  the process id, then sleeps until killed; later attempts send.
- ``slow-<n>``: sleeps 0.3 s, then sends.
- ``later-<n>``: the first attempt is a 429 asking to come back in 1 s
  (``Retry-After: 1``); later attempts send.

Every call appends one JSON line to the ``APP_CALLS`` file (delivery id,
idempotency key, attempt, pid), so the test counts provider calls across
processes.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime
from pathlib import Path

import redis

from chimeway_backends.rq import RQBackend
from chimeway_core import (
    Bounced,
    ChannelResult,
    ErrorClass,
    PermanentFailure,
    RetryPolicy,
    Sent,
    TemporaryFailure,
)
from chimeway_core.channels.base import DeliveryGuarantee
from chimeway_core.engine import Chimeway, RescueReport
from chimeway_core.records import Delivery
from chimeway_core.store import SQLStore

#: Three attempts, 0.2 s apart, no jitter.
RETRY = RetryPolicy(max_attempts=3, initial_delay=0.2, backoff_factor=1.0, jitter=0.0)
#: What ``mix-<n>`` ends as, by ``n % 5``: (status, reason, attempts).
EXPECTED: dict[int, tuple[str, str | None, int]] = {
    0: ("succeeded", None, 1),
    1: ("succeeded", None, 2),
    2: ("cancelled", "retries_exhausted", 3),
    3: ("cancelled", "permanent_failure", 1),
    4: ("cancelled", "bounced", 1),
}
CHANNEL_TIMEOUT = 1.0


class ScriptedLoggingChannel:
    """Results scripted by the recipient; every call logged to a file shared by all processes."""

    guarantee = DeliveryGuarantee.AT_LEAST_ONCE
    exception_class = ErrorClass.TEMPORARY
    timeout = CHANNEL_TIMEOUT

    def __init__(self, calls: Path, markers: Path | None) -> None:
        self.calls = calls
        self.markers = markers

    def send(self, delivery: Delivery, idempotency_key: str) -> ChannelResult:
        """Log the call, then play the recipient's script."""
        line = {
            "delivery": str(delivery.id),
            "key": idempotency_key,
            "attempt": delivery.attempt_count,
            "pid": os.getpid(),
        }
        with self.calls.open("a") as log:
            log.write(json.dumps(line) + "\n")
        kind, _, number = delivery.recipient.partition("-")
        attempt = delivery.attempt_count
        if kind == "block":
            if attempt == 1 and self.markers is not None:
                marker = self.markers / str(delivery.id)
                marker.with_suffix(".tmp").write_text(str(os.getpid()))
                marker.with_suffix(".tmp").rename(marker)
                time.sleep(600)
            return Sent()
        if kind == "slow":
            time.sleep(0.3)
            return Sent()
        if kind == "later":
            return TemporaryFailure("429", retry_after=1.0) if attempt == 1 else Sent()
        match int(number) % 5:
            case 0:
                return Sent()
            case 1:
                return TemporaryFailure("scripted") if attempt == 1 else Sent()
            case 2:
                return TemporaryFailure("scripted")
            case 3:
                return PermanentFailure("scripted")
            case _:
                return Bounced("scripted")


class PausingRescue(Chimeway):
    """An engine whose rescue takes ``pause`` seconds longer: a shutdown lands in the middle."""

    pause = 0.0

    def rescue(self, now: datetime | None = None, *, limit: int = 500) -> RescueReport:
        """Sleep, then rescue."""
        time.sleep(self.pause)
        return super().rescue(now, limit=limit)


def build(
    *,
    db_url: str,
    redis_url: str,
    queue: str,
    calls: Path,
    markers: Path | None = None,
    lease_margin: float = 2.0,
    requeue_after: float = 300.0,
    job_timeout: int = 3,
    rescue_pause: float = 0.0,
    namespace: str | None = None,
) -> Chimeway:
    """The engine every process of one test uses."""
    store = SQLStore(db_url, namespace=namespace)
    backend = RQBackend(redis.Redis.from_url(redis_url), queue, job_timeout=job_timeout)
    engine = PausingRescue(
        store,
        backend,
        {"scripted": ScriptedLoggingChannel(calls, markers)},
        retry=RETRY,
        lease_margin=lease_margin,
        requeue_after=requeue_after,
    )
    engine.pause = rescue_pause
    return engine


def engine() -> Chimeway:
    """The engine of a worker subprocess, configured from ``APP_*`` environment variables."""
    env = os.environ
    return build(
        db_url=env["APP_DB_URL"],
        redis_url=env["APP_REDIS_URL"],
        queue=env["APP_QUEUE"],
        calls=Path(env["APP_CALLS"]),
        markers=Path(env["APP_MARKERS"]) if env.get("APP_MARKERS") else None,
        lease_margin=float(env.get("APP_LEASE_MARGIN", "2.0")),
        requeue_after=float(env.get("APP_REQUEUE_AFTER", "300")),
        job_timeout=int(env.get("APP_JOB_TIMEOUT", "3")),
        rescue_pause=float(env.get("APP_RESCUE_PAUSE", "0")),
        namespace=env.get("APP_NAMESPACE") or None,
    )
