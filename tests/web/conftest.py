"""Fixtures for the console: an engine with seeded deliveries, and a client on its WSGI app.

The ledger holds a delivery in each interesting shape, made by the engine
itself (notify, then perform with a channel that answers per payload), so
attempts, journal entries and dispatch rows are the real ones. Canaries:
the payload's text must never reach a page unless revealed, the
recipient's local part never at all; hostile text (HTML, script, control
characters, a URL with credentials) must render inert.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import httpx
import pytest

from chimeway_backends.memory import MemoryBackend
from chimeway_core import RetryPolicy, VirtualClock
from chimeway_core.channels.callable import CallableChannel
from chimeway_core.engine import Chimeway
from chimeway_core.outcomes import PermanentFailure, Sent, TemporaryFailure
from chimeway_core.records import Delivery
from chimeway_core.store import SQLStore
from chimeway_web import Console

START = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
PAYLOAD_CANARY = "PAYLOAD-CANARY-7f3a"
RECIPIENT_CANARY = "recipient-canary-91"
HOSTILE = "<script>alert(1)</script>"
SECRET_URL = "https://alice:s3cr3t-pw@api.example.com/v1"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def _send(delivery: Delivery, _key: str) -> object:
    mode = (delivery.payload or {}).get("mode")
    if mode == "fail":
        return PermanentFailure(
            f"<img src=x onerror=alert(1)> bell\x07 at {SECRET_URL}",
            provider_response={
                "html": "<b>refused</b>",
                "see": SECRET_URL,
                "to": delivery.recipient,
            },
        )
    if mode == "temp":
        return TemporaryFailure(f"<i>busy</i> for {delivery.recipient}")
    return Sent(provider_response={"id": "<em>m-1</em>"})


@pytest.fixture
def clock() -> VirtualClock:
    """A virtual clock at a fixed start."""
    return VirtualClock(START)


@pytest.fixture
def engine(store: SQLStore, clock: VirtualClock) -> Chimeway:
    """An engine on the store under test with one channel, ``mail``, answering per payload."""
    return Chimeway(
        store,
        MemoryBackend(clock),
        {"mail": CallableChannel(_send)},
        retry=RetryPolicy(max_attempts=3, initial_delay=60.0, jitter=0.0),
        clock=clock,
    )


def notify(engine: Chimeway, recipient: str, mode: str, **options: Any) -> UUID:
    """Notify ``recipient`` on ``mail`` with a payload holding the canary; return the id."""
    return engine.notify(
        channel="mail",
        recipient=recipient,
        payload={"mode": mode, "secret": PAYLOAD_CANARY},
        **options,
    ).id


@pytest.fixture
def seeded(engine: Chimeway) -> dict[str, UUID]:
    """A delivery in each shape: sent, failed for good, retrying, ready, cancelled, hostile."""
    ids = {
        "sent": notify(engine, f"{RECIPIENT_CANARY}@example.com", "ok", notification_key="n-1"),
        "echoed": notify(engine, f"{RECIPIENT_CANARY}-2@example.com", "fail"),
        "echoed-temp": notify(engine, f"{RECIPIENT_CANARY}-3@example.com", "temp"),
        "refused": notify(engine, "bob@example.com", "fail"),
        "retrying": notify(engine, "carol@example.com", "temp"),
        "ready": notify(engine, "dave@example.com", "ok", idempotency_key="idem-ready"),
        "cancelled": notify(engine, "erin@example.com", "ok"),
        "hostile": notify(engine, HOSTILE, "fail", notification_key=f"{HOSTILE}\x1b[31m"),
    }
    for name in ("sent", "echoed", "echoed-temp", "refused", "retrying", "hostile"):
        engine.perform(ids[name])
    engine.cancel(ids["cancelled"])
    return ids


def client_of(app: Any, root: str = "") -> httpx.Client:
    """A client on a WSGI app, at ``root``."""
    return httpx.Client(transport=httpx.WSGITransport(app=app), base_url=f"http://console{root}")


@pytest.fixture
def console(engine: Chimeway) -> Console:
    """The console over the engine, acting as ``alice``."""
    return Console(engine, actor=lambda _request: "alice", secret="test-secret")


@pytest.fixture
def client(console: Console) -> Iterator[httpx.Client]:
    """A client on the console's WSGI app."""
    with client_of(console.wsgi) as http:
        yield http


def csrf_of(page: str) -> str:
    """The CSRF token a confirmation page's form carries."""
    found = CSRF.search(page)
    assert found is not None, "no CSRF token on the page"
    return found.group(1)
