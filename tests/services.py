"""Reaching the real services the integration tests need.

A test that needs PostgreSQL, Redis or RabbitMQ calls :func:`require` first.
When the service is unreachable the test is skipped with the reason — unless
``CHIMEWAY_REQUIRE_SERVICES=1`` is set (CI sets it), in which case the test
fails: in CI a missing service is a broken run, never a silent skip.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import Engine, create_engine, make_url, text

from chimeway_core.schema import metadata

POSTGRES_HOST = os.environ.get("CHIMEWAY_TEST_PGHOST", "127.0.0.1")
POSTGRES_PORT = int(os.environ.get("CHIMEWAY_TEST_PGPORT", "5432"))
POSTGRES_ADMIN_URL = os.environ.get(
    "CHIMEWAY_TEST_POSTGRES_URL",
    f"postgresql+psycopg://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/test",
)
REDIS_URL = os.environ.get("CHIMEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RABBITMQ_URL = os.environ.get("CHIMEWAY_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")


def pika_url(url: str) -> str:
    """A kombu-style AMQP URL as pika reads it: kombu's ``//`` (the default vhost) is ``/%2F``."""
    return url[:-2] + "/%2F" if url.endswith("//") else url


#: :data:`RABBITMQ_URL` for pika (Dramatiq's RabbitMQ client).
RABBITMQ_PIKA_URL = pika_url(RABBITMQ_URL)

_ENDPOINTS = {
    "postgres": (POSTGRES_HOST, POSTGRES_PORT),
    "redis": ("127.0.0.1", 6379),
    "rabbitmq": ("127.0.0.1", 5672),
}


def services_required() -> bool:
    """Whether a missing service must fail the run instead of skipping."""
    return os.environ.get("CHIMEWAY_REQUIRE_SERVICES", "") == "1"


def reachable(service: str, timeout: float = 1.0) -> bool:
    """Whether a TCP connection to ``service`` succeeds."""
    host, port = _ENDPOINTS[service]
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require(service: str) -> None:
    """Skip (or, under CHIMEWAY_REQUIRE_SERVICES=1, fail) if ``service`` is down."""
    if reachable(service):
        return
    host, port = _ENDPOINTS[service]
    message = f"{service} is not reachable at {host}:{port}"
    if services_required():
        pytest.fail(f"{message} and CHIMEWAY_REQUIRE_SERVICES=1", pytrace=False)
    pytest.skip(message)


@contextmanager
def fresh_postgres_database(prefix: str) -> Iterator[str]:
    """Create an empty PostgreSQL database named ``<prefix>_<random>``; yield its URL; drop it.

    Requires PostgreSQL (see :func:`require`). Each test run gets its own
    databases, so runs never collide.
    """
    require("postgres")
    name = f"{prefix}_{secrets.token_hex(6)}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def truncate_tables(engine: Engine) -> None:
    """Empty every chimeway table of the PostgreSQL database behind ``engine``."""
    names = ", ".join(table.name for table in metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} CASCADE"))
