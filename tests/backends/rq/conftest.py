"""Fixtures for the RQ backend tests: a dedicated Redis database, unique queues, PostgreSQL.

Every test gets its own queue name; at teardown every key of that queue and
of its jobs is deleted, so runs never collide and the test database
(:data:`REDIS_TEST_DB`) stays clean.
"""

from __future__ import annotations

import re
import secrets
import signal
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from chimeway_backends.rq import job as rq_job
from tests.services import REDIS_URL, require

#: The Redis database the RQ tests write to.
REDIS_TEST_DB = 15
#: The Redis database the FLUSHDB test empties (it must belong to that test alone).
REDIS_FLUSH_DB = 11  # 14 is the Celery tests', 12 and 13 the fault suite's
#: The Redis database the poisoned-queue tests write job keys RQ cannot read to.
REDIS_POISON_DB = 6  # 10 is the benchmarks', 9 the RQ stateful test's, 8 the Celery one's

_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def redis_url(db: int) -> str:
    """``REDIS_URL`` pointed at database ``db``."""
    return urlunsplit(urlsplit(REDIS_URL)._replace(path=f"/{db}"))


def purge(conn: redis.Redis, queue: str) -> None:
    """Delete every key of ``queue``: its registries and its jobs' hashes, results, executions."""
    job_keys = list(conn.scan_iter(match="rq:job:*", count=1000))
    with conn.pipeline(transaction=False) as pipe:
        for key in job_keys:
            pipe.hget(key, "origin")
        # A poisoned-queue test's job key may not be a hash: its error is no origin.
        origins = pipe.execute(raise_on_error=False)
    ours = {
        found.group()
        for key, origin in zip(job_keys, origins, strict=True)
        if origin == queue.encode() and (found := _UUID.search(key)) is not None
    }
    doomed = [
        key
        for key in conn.scan_iter(count=1000)
        if queue.encode() in key or ((found := _UUID.search(key)) and found.group() in ours)
    ]
    if doomed:
        conn.delete(*doomed)
    conn.srem("rq:queues", f"rq:queue:{queue}")


@pytest.fixture
def redis_conn() -> Iterator[redis.Redis]:
    """A client on the RQ test database (skips, or fails in CI, if Redis is down)."""
    require("redis")
    conn = redis.Redis.from_url(redis_url(REDIS_TEST_DB))
    yield conn
    conn.close()


@pytest.fixture
def queue_name(redis_conn: redis.Redis) -> Iterator[str]:
    """A queue name no other test uses; all its keys are deleted at teardown."""
    name = f"chimeway-test-{secrets.token_hex(6)}"
    yield name
    purge(redis_conn, name)


@pytest.fixture(autouse=True)
def _isolated_process() -> Iterator[None]:
    """Undo what an in-process RQ worker leaves behind: its engine and its signal handlers."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    rq_job.ENGINE.forget()
    for sig, handler in saved.items():
        signal.signal(sig, handler)
