"""Fixtures for the RQ backend tests: a dedicated Redis database, unique queues, PostgreSQL.

Every test gets its own queue name; at teardown every key of that queue and
of its jobs is deleted, so runs never collide and the test database
(:data:`REDIS_TEST_DB`) stays clean.
"""

from __future__ import annotations

import secrets
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from chimeway_backends.rq import job as rq_job
from chimeway_backends.rq.harness import purge
from tests.backends._workers import ROOT
from tests.services import REDIS_URL, require

__all__ = ["purge"]  # the tests' cleanup is the shipped harness's

#: The Redis database the RQ tests write to.
REDIS_TEST_DB = 15
#: The Redis database the FLUSHDB test empties (it must belong to that test alone).
REDIS_FLUSH_DB = 11  # 14 is the Celery tests', 12 and 13 the fault suite's
#: The Redis database the poisoned-queue tests write job keys RQ cannot read to.
REDIS_POISON_DB = 6  # 10 is the benchmarks', 9 the RQ stateful test's, 8 the Celery one's


def redis_url(db: int) -> str:
    """``REDIS_URL`` pointed at database ``db``."""
    return urlunsplit(urlsplit(REDIS_URL)._replace(path=f"/{db}"))


@contextmanager
def redis_client(db: int) -> Iterator[redis.Redis]:
    """A client on Redis database ``db`` (skips, or fails in CI, if Redis is down)."""
    require("redis")
    conn = redis.Redis.from_url(redis_url(db))
    try:
        yield conn
    finally:
        conn.close()


@contextmanager
def scratch_queue(conn: redis.Redis, prefix: str) -> Iterator[str]:
    """A queue name starting with ``prefix`` no other test uses; its keys are deleted after."""
    name = f"{prefix}{secrets.token_hex(6)}"
    try:
        yield name
    finally:
        purge(conn, name)


class Workers:
    """Long-running worker processes a test starts, each logging to a file of ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[subprocess.Popen[bytes]] = []

    def start(
        self, command: list[str], env: dict[str, str]
    ) -> tuple[subprocess.Popen[bytes], Path]:
        """Start ``command`` in the repository's root; the process and its log file."""
        log_path = self.directory / f"worker-{len(self.started)}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
            )
        self.started.append(process)
        return process, log_path

    def stop(self, timeout: float) -> None:
        """SIGTERM every worker; SIGKILL one still running ``timeout`` seconds later."""
        for process in self.started:
            process.send_signal(signal.SIGTERM)
        for process in self.started:
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def redis_conn() -> Iterator[redis.Redis]:
    """A client on the RQ test database (skips, or fails in CI, if Redis is down)."""
    with redis_client(REDIS_TEST_DB) as conn:
        yield conn


@pytest.fixture
def queue_name(redis_conn: redis.Redis) -> Iterator[str]:
    """A queue name no other test uses; all its keys are deleted at teardown."""
    with scratch_queue(redis_conn, "chimeway-test-") as name:
        yield name


@pytest.fixture(autouse=True)
def _isolated_process() -> Iterator[None]:
    """Undo what an in-process RQ worker leaves behind: its engine and its signal handlers."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    rq_job.ENGINE.forget()
    for sig, handler in saved.items():
        signal.signal(sig, handler)
