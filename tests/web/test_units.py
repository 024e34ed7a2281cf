"""The console's small parts: masks, redaction, signatures, cursors, the router, ASGI lifespan."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chimeway_web.adapters import asgi_app
from chimeway_web.http import HTTPError, Request, Response, Router
from chimeway_web.queries import Cursor, DeliveryFilters
from chimeway_web.safety import Signer, mask_emails, mask_recipient, redact, shown, visible

pytestmark = pytest.mark.extras


@pytest.mark.parametrize(
    ("recipient", "masked"),
    [
        ("alice@example.com", "a•••@example.com"),
        ("+15551234567", "+1•••67"),
        ("abcd", "•••"),
        ("@example.com", "@e•••om"),
    ],
)
def test_mask_recipient(recipient: str, masked: str) -> None:
    """Email: first char and domain; else first and last two; short: nothing."""
    assert masked == mask_recipient(recipient)


def test_mask_emails_masks_every_address_in_text() -> None:
    """Two addresses in a provider's message, both masked."""
    text = "rejected bob.smith@example.com and x+y@mail.example.org today"
    assert "rejected b•••@example.com and x•••@mail.example.org today" == mask_emails(
        text, mask_recipient
    )


def test_redact_and_visible() -> None:
    """Userinfo of any scheme goes; controls and bidi overrides become escapes."""
    assert "see https://***@api.example.com/x and redis://***@r:6379" == redact(
        "see https://user:pw@api.example.com/x and redis://:pw@r:6379"
    )
    assert "a\\x07b\\x1bc\\u202ed" == visible("a\x07b\x1bc\u202ed")
    assert "line\nnext\tcol" == visible("line\nnext\tcol")
    assert "3" == shown(3)


@given(st.text())
def test_signatures_round_trip_and_resist_tampering(value: str) -> None:
    """What one key signs it reads back; another key, or an altered token, reads nothing."""
    signer = Signer("k")
    token = signer.sign(value)
    assert value == signer.unsign(token)
    assert Signer("other").unsign(token) is None
    assert signer.unsign(token + "x") is None
    assert signer.unsign("." + token.partition(".")[2]) in {None, ""}


def test_csrf_needs_both_halves_equal_and_signed() -> None:
    """Cookie and field must match and carry this signer's signature."""
    signer = Signer(None)
    token = signer.new_csrf()
    assert signer.csrf_ok(token, token)
    assert not signer.csrf_ok(token, signer.new_csrf())
    assert not signer.csrf_ok(None, token)
    assert not signer.csrf_ok(token, "")
    foreign = Signer(None).new_csrf()
    assert not signer.csrf_ok(foreign, foreign)


@given(st.datetimes(timezones=st.just(UTC)), st.uuids())
def test_cursors_round_trip(at: datetime, delivery_id: Any) -> None:
    """encode() then decode() is the identity."""
    cursor = Cursor(at, delivery_id)
    assert cursor == Cursor.decode(cursor.encode())


@pytest.mark.parametrize("token", ["", "x", "bm90IGEgY3Vyc29y", "MjAzMC0wMS0wMXx6eg"])
def test_a_foreign_cursor_is_a_value_error(token: str) -> None:
    """Garbage, a base64 of garbage, a naive time or a bad id."""
    with pytest.raises(ValueError, match="not a page cursor"):
        Cursor.decode(token)


def test_filters_refuse_naive_times() -> None:
    """since and until must carry a zone."""
    with pytest.raises(ValueError, match="since"):
        DeliveryFilters(since=datetime(2030, 1, 1))
    DeliveryFilters(until=datetime(2030, 1, 1, tzinfo=UTC) + timedelta(days=1))


def test_the_router_captures_segments_and_refuses_the_rest() -> None:
    """One segment per part; unknown path 404, known path with another method 405."""
    router = Router()
    router.add("/deliveries/<id>/cancel", {"POST": lambda _c, id: Response(body=id.encode())})
    handler, parts = router.resolve("POST", f"/deliveries/{uuid4()}/cancel")
    assert ["id"] == list(parts)
    for method, path, status in [
        ("POST", "/deliveries/a/b/cancel", 404),
        ("GET", "/deliveries/a/cancel", 405),
    ]:
        with pytest.raises(HTTPError) as raised:
            router.resolve(method, path)
        assert status == raised.value.status
    assert handler is not None


def test_request_urls_carry_the_root_and_leave_out_empty_values() -> None:
    """The mount prefix first; None and "" parameters dropped; the rest encoded."""
    request = Request(method="GET", path="/", root="/ops")
    assert "/ops/deliveries?status=ready&recipient=a%26b" == request.url(
        "/deliveries", {"status": "ready", "reason": None, "channel": "", "recipient": "a&b"}
    )


def test_asgi_lifespan_is_acknowledged_and_websockets_refused() -> None:
    """Startup and shutdown complete; a websocket scope raises."""
    app = asgi_app(lambda _request: Response())
    sent: list[dict[str, Any]] = []
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app({"type": "lifespan"}, receive, send))
    assert ["lifespan.startup.complete", "lifespan.shutdown.complete"] == [m["type"] for m in sent]
    with pytest.raises(ValueError, match="HTTP only"):
        asyncio.run(app({"type": "websocket"}, receive, send))
