"""WebhookChannel against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from chimeway_core.channels import DeliveryGuarantee, WebhookChannel
from chimeway_core.channels.webhook import parse_retry_after
from chimeway_core.errors import InvalidDeliveryError, MissingExtraError, OutcomeUnknownError
from chimeway_core.outcomes import PermanentFailure, Sent, TemporaryFailure
from chimeway_core.records import Delivery
from chimeway_core.testing import make_delivery as kit_delivery

from .conftest import ANY_PORT, HTTPTestServer, Reply, free_port, make_delivery

LOOPBACK = ["127.0.0.1/32"]
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def channel(url: str | Callable[[Delivery], str], **kwargs: object) -> WebhookChannel:
    """A webhook channel allowed to reach loopback only, with short timeouts."""
    options: dict[object, object] = {
        "allow_networks": LOOPBACK,
        "allow_ports": ANY_PORT,
        "connect_timeout": 1.0,
        "read_timeout": 0.5,
        "clock": lambda: NOW,
    }
    options.update(kwargs)
    return WebhookChannel(url, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_2xx_is_sent_with_the_status(http_server: HTTPTestServer, status: int) -> None:
    """A 2xx answer is Sent, and the provider response is the status only."""
    http_server.replies["/hook"] = Reply(status)
    result = channel(http_server.url()).send(make_delivery(), "key-1")
    assert Sent(provider_response={"status": status}) == result


def test_message_id_header_is_kept_sanitised(http_server: HTTPTestServer) -> None:
    """A provider message id header is kept, stripped of unsafe characters and capped."""
    http_server.replies["/hook"] = Reply(200, {"X-Message-Id": "msg_123 <b>" + "x" * 300})
    result = channel(http_server.url()).send(make_delivery(), "key-1")
    assert isinstance(result, Sent)
    expected = ("msg_123<b>" + "x" * 300)[:127]
    assert expected[:120] == str(result.provider_response["message_id"])[:120]
    assert len(str(result.provider_response["message_id"])) <= 128


def test_request_carries_payload_and_idempotency_key(http_server: HTTPTestServer) -> None:
    """The payload is POSTed as JSON with the Idempotency-Key header."""
    delivery = make_delivery(payload={"order": 42, "items": ["a", "b"]})
    channel(http_server.url()).send(delivery, "the-key")
    (request,) = http_server.received
    assert "the-key" == request.headers["Idempotency-Key"]
    assert "application/json" == request.headers["Content-Type"]
    assert {"order": 42, "items": ["a", "b"]} == json.loads(request.body)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
def test_retryable_statuses_are_temporary(http_server: HTTPTestServer, status: int) -> None:
    """408, 429 and 5xx are temporary failures."""
    http_server.replies["/hook"] = Reply(status)
    result = channel(http_server.url()).send(make_delivery(), "key-1")
    assert TemporaryFailure(f"HTTP {status}", None, provider_response={"status": status}) == result


def test_retry_after_seconds_is_honoured(http_server: HTTPTestServer) -> None:
    """A 429 with Retry-After in seconds gives that retry_after."""
    http_server.replies["/hook"] = Reply(429, {"Retry-After": "120"})
    result = channel(http_server.url()).send(make_delivery(), "key-1")
    assert isinstance(result, TemporaryFailure)
    assert 120.0 == result.retry_after


def test_retry_after_http_date_is_honoured(http_server: HTTPTestServer) -> None:
    """A 503 with Retry-After as an HTTP-date gives the seconds until that date."""
    when = format_datetime(NOW + timedelta(seconds=90), usegmt=True)
    http_server.replies["/hook"] = Reply(503, {"Retry-After": when})
    result = channel(http_server.url()).send(make_delivery(), "key-1")
    assert isinstance(result, TemporaryFailure)
    assert 90.0 == result.retry_after


def test_parse_retry_after_edge_cases() -> None:
    """Garbage is ignored and a past date means retry now."""
    past = format_datetime(NOW - timedelta(hours=1), usegmt=True)
    expected = [None, None, 0.0, 0.0]
    actual = [
        parse_retry_after(None, NOW),
        parse_retry_after("soon", NOW),
        parse_retry_after(past, NOW),
        parse_retry_after("0", NOW),
    ]
    assert expected == actual


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422])
def test_other_4xx_are_permanent(http_server: HTTPTestServer, status: int) -> None:
    """Any 4xx except 408 and 429 is a permanent failure."""
    http_server.replies["/hook"] = Reply(status)
    result = channel(http_server.url()).send(make_delivery(), "key-1")
    assert PermanentFailure(f"HTTP {status}", provider_response={"status": status}) == result


def test_read_timeout_after_request_is_outcome_unknown(http_server: HTTPTestServer) -> None:
    """A server that reads the request and never answers makes the outcome unknown."""
    http_server.replies["/hook"] = Reply(action="hang")
    with pytest.raises(OutcomeUnknownError, match="ReadTimeout"):
        channel(http_server.url(), read_timeout=0.3).send(make_delivery(), "key-1")
    assert 1 == len(http_server.received)


def test_connection_dropped_after_request_is_outcome_unknown(http_server: HTTPTestServer) -> None:
    """A server that closes the connection after reading the request makes it unknown."""
    http_server.replies["/hook"] = Reply(action="close")
    with pytest.raises(OutcomeUnknownError, match="RemoteProtocolError"):
        channel(http_server.url()).send(make_delivery(), "key-1")
    assert 1 == len(http_server.received)


def test_refused_port_is_temporary() -> None:
    """A refused connection is a temporary failure: nothing was sent."""
    result = channel(f"http://127.0.0.1:{free_port()}/hook").send(make_delivery(), "key-1")
    assert TemporaryFailure("connection failed, nothing was sent (ConnectError)") == result


def test_redirect_is_followed_with_the_same_post(http_server: HTTPTestServer) -> None:
    """A 307 is followed, re-POSTing the same body and key, and counted."""
    http_server.replies["/hook"] = Reply(307, {"Location": "/final"})
    result = channel(http_server.url()).send(make_delivery(), "key-1")
    assert Sent(provider_response={"status": 200, "redirects": 1}) == result
    first, second = http_server.received
    assert ("/final", first.body, "key-1") == (
        second.path,
        second.body,
        second.headers["Idempotency-Key"],
    )


def test_redirect_loop_stops_at_max_redirects(http_server: HTTPTestServer) -> None:
    """A redirect loop ends in a permanent failure after max_redirects hops."""
    http_server.replies["/hook"] = Reply(302, {"Location": "/hook"})
    result = channel(http_server.url(), max_redirects=2).send(make_delivery(), "key-1")
    assert PermanentFailure("more than 2 redirects", provider_response={"status": 302}) == result
    assert 3 == len(http_server.received)


def test_custom_headers_dropped_on_cross_origin_redirect(http_server: HTTPTestServer) -> None:
    """Credentials in custom headers do not follow a redirect to another origin."""
    other = f"http://localhost.test:{http_server.port}/final"
    http_server.replies["/hook"] = Reply(308, {"Location": other})
    webhook = channel(
        http_server.url(),
        headers={"Authorization": "Bearer s3cr3t"},
        resolver=lambda host, port: ["127.0.0.1"],
    )
    assert isinstance(webhook.send(make_delivery(), "key-1"), Sent)
    first, second = http_server.received
    assert ("Bearer s3cr3t", None) == (
        first.headers.get("Authorization"),
        second.headers.get("Authorization"),
    )


def test_connects_to_resolved_ip_with_original_host_header(http_server: HTTPTestServer) -> None:
    """The request goes to the checked IP while Host keeps the original name."""
    webhook = channel(
        f"http://hooks.example.test:{http_server.port}/hook",
        resolver=lambda host, port: ["127.0.0.1"],
    )
    assert isinstance(webhook.send(make_delivery(), "key-1"), Sent)
    (request,) = http_server.received
    assert f"hooks.example.test:{http_server.port}" == request.headers["Host"]


def test_url_for_is_called_with_the_delivery(http_server: HTTPTestServer) -> None:
    """url_for(delivery) picks the endpoint per delivery."""
    delivery = make_delivery()
    webhook = channel(lambda d: http_server.url(f"/hook/{d.notification_key}"))
    webhook.send(delivery, "key-1")
    assert ["/hook/welcome"] == [r.path for r in http_server.received]


def test_unserialisable_payload_is_permanent(http_server: HTTPTestServer) -> None:
    """A payload JSON cannot encode fails permanently before any connection."""
    result = channel(http_server.url()).send(make_delivery(payload={"x": object()}), "key-1")
    assert PermanentFailure("payload is not JSON-serialisable (TypeError)") == result
    assert [] == http_server.connections


def test_defaults_and_worst_case_timeout() -> None:
    """The default guarantee is at-least-once and timeout bounds every hop."""
    webhook = WebhookChannel(
        "https://example.com/", connect_timeout=1, read_timeout=2, write_timeout=3
    )
    assert (DeliveryGuarantee.AT_LEAST_ONCE, 24.0) == (webhook.guarantee, webhook.timeout)
    assert "example.com" not in repr(webhook)


def test_missing_httpx_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without httpx, constructing the channel names the webhook extra."""
    monkeypatch.setitem(sys.modules, "httpx", None)
    with pytest.raises(MissingExtraError, match=r'pip install "chimeway\[webhook\]"'):
        WebhookChannel("https://example.com/")


@pytest.mark.parametrize(
    ("address", "expected_url"),
    [
        ("93.184.216.34", "https://93.184.216.34/hook?x=1"),
        ("2606:4700::1111", "https://[2606:4700::1111]/hook?x=1"),
    ],
)
def test_https_goes_to_checked_ip_with_sni_of_the_host(address: str, expected_url: str) -> None:
    """Over HTTPS the checked IP is dialled with SNI and Host set to the original name."""
    import httpx

    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202)

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        webhook = WebhookChannel(
            "https://hooks.example.test/hook?x=1",
            resolver=lambda host, port: [address],
            client=client,
        )
        result = webhook.send(make_delivery(), "key-1")
    (request,) = seen
    assert (
        Sent(provider_response={"status": 202}),
        expected_url,
        "hooks.example.test",
        "hooks.example.test",
    ) == (
        result,
        str(request.url),
        request.headers["Host"],
        request.extensions["sni_hostname"],
    )


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"url": 5}, TypeError, "url must be a str or a callable"),
        ({"url": "ftp://files.example.com/hook"}, ValueError, "http:// or https://"),
        ({"url": "https://"}, ValueError, "url"),
        ({"url": "hooks.example.com/x"}, ValueError, "http:// or https://"),
        ({"read_timeout": "10"}, TypeError, "read_timeout must be a number"),
        ({"max_redirects": 1.5}, TypeError, "max_redirects must be an int"),
        ({"headers": [("X-Token", "t")]}, TypeError, "headers must be a mapping"),
        ({"headers": {"X-Retry": 3}}, TypeError, "headers must be a mapping"),
    ],
)
def test_a_wrong_argument_is_named_without_echoing_the_url(
    arguments: dict[str, object], error: type[Exception], message: str
) -> None:
    """A static URL is checked at construction; the message never repeats it (tokens)."""
    given: dict[str, object] = {"url": "https://hooks.example.com/x?token=s3cret", **arguments}
    with pytest.raises(error, match=message) as raised:
        WebhookChannel(**given)  # type: ignore[arg-type]
    assert "s3cret" not in str(raised.value)
    assert "files.example.com" not in str(raised.value)


#: Slack for a loaded machine: a cut-off send ends well within it, a dripped one
#: (15 s) never does.
DEADLINE_SLACK = 5.0


@pytest.mark.parametrize("own_client", [False, True])
def test_a_dripping_endpoint_is_cut_off_at_the_channel_timeout(
    http_server: HTTPTestServer, own_client: bool
) -> None:
    """One byte per read timeout cannot hold a send past ``timeout``, pooled client or not."""
    import httpx

    http_server.replies["/hook"] = Reply(action="drip")
    with httpx.Client() as client:
        webhook = channel(
            http_server.url(),
            read_timeout=1.0,
            timeout=1.5,
            client=client if own_client else None,
        )
        started = time.monotonic()
        with pytest.raises(OutcomeUnknownError, match=r"within the channel's timeout of 1\.5 s"):
            webhook.send(make_delivery(), "key-1")
        elapsed = time.monotonic() - started
    assert 1.5 <= elapsed < 1.5 + DEADLINE_SLACK
    (request,) = http_server.received
    assert "close" == request.headers["Connection"]


def test_the_deadline_spans_redirects(http_server: HTTPTestServer) -> None:
    """A redirect does not restart the clock: the hop after it is cut at the same deadline."""
    http_server.replies["/hook"] = Reply(307, {"Location": "/drip"})
    http_server.replies["/drip"] = Reply(action="drip")
    webhook = channel(http_server.url(), read_timeout=1.0, timeout=1.5)
    started = time.monotonic()
    with pytest.raises(OutcomeUnknownError, match="channel's timeout"):
        webhook.send(make_delivery(), "key-1")
    assert time.monotonic() - started < 1.5 + DEADLINE_SLACK
    assert ["/hook", "/drip"] == [r.path for r in http_server.received]


def test_redirects_that_use_up_the_timeout_end_the_send() -> None:
    """Past the deadline between hops, no next request is made: temporary, nothing sent."""
    import httpx

    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        time.sleep(0.3)
        return httpx.Response(307, headers={"Location": "/next"})

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        webhook = WebhookChannel(
            "https://hooks.example.test/hook",
            resolver=lambda host, port: ["93.184.216.34"],
            client=client,
            timeout=0.2,
        )
        result = webhook.send(make_delivery(), "key-1")
    assert (TemporaryFailure("redirects used up the channel's timeout of 0.2 s"), ["/hook"]) == (
        result,
        seen,
    )


def test_an_explicit_timeout_is_the_deadline() -> None:
    """``timeout`` given replaces the per-hop sum, and is checked like the others."""
    assert 7.5 == WebhookChannel("https://example.com/", timeout=7.5).timeout
    with pytest.raises(ValueError, match="timeout must be"):
        WebhookChannel("https://example.com/", timeout=0)


def test_the_clients_credentials_do_not_cross_origins(http_server: HTTPTestServer) -> None:
    """A shared client's headers, auth and cookies reach the first origin only."""
    import httpx

    other = f"http://other.test:{http_server.port}/final"
    http_server.replies["/hook"] = Reply(307, {"Location": other, "Set-Cookie": "sid=tenant-a"})
    with httpx.Client(
        headers={"X-Api-Key": "k3y"}, auth=("user", "pa55"), cookies={"jar": "c00kie"}
    ) as client:
        webhook = channel(
            http_server.url(), client=client, resolver=lambda host, port: ["127.0.0.1"]
        )
        assert isinstance(webhook.send(make_delivery(), "key-1"), Sent)
        assert isinstance(webhook.send(make_delivery(), "key-2"), Sent)
    lowered = [(r.path, {k.lower(): v for k, v in r.headers.items()}) for r in http_server.received]
    sent = [(p, h.get("x-api-key"), "authorization" in h, h.get("cookie")) for p, h in lowered]
    assert [
        ("/hook", "k3y", True, None),
        ("/final", None, False, None),
        ("/hook", "k3y", True, None),
        ("/final", None, False, None),
    ] == sent


def test_a_redirect_from_https_to_http_is_refused() -> None:
    """Never downgrade: an https hop redirected to http ends the send, permanently."""
    import httpx

    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(308, headers={"Location": "http://hooks.example.test/plain"})

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        webhook = WebhookChannel(
            "https://hooks.example.test/hook",
            resolver=lambda host, port: ["93.184.216.34"],
            client=client,
        )
        result = webhook.send(make_delivery(), "key-1")
    assert (
        PermanentFailure("HTTP 308 redirect from https to http refused"),
        ["https://93.184.216.34/hook"],
    ) == (result, seen)


@pytest.mark.parametrize("value", [b"http://user:pa55@127.0.0.1/x", None, 42])
def test_url_for_must_return_a_str(http_server: HTTPTestServer, value: object) -> None:
    """A url_for that returns no str is a programming error: permanent, value never echoed."""
    result = channel(lambda d: value).send(make_delivery(), "key-1")  # type: ignore[arg-type,return-value]
    assert PermanentFailure(f"url_for returned a {type(value).__name__}, not a str") == result
    assert [] == http_server.connections


def test_httpx_logs_only_the_origin_of_a_webhook_url(
    http_server: HTTPTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    """httpx's INFO line shows the dialled origin, never userinfo, path or query."""
    import httpx

    caplog.set_level(logging.INFO, logger="httpx")
    secret_url = f"http://user:pa55@hooks.example.test:{http_server.port}/T0K3N/hook?sig=s1gn"
    webhook = channel(secret_url, resolver=lambda host, port: ["127.0.0.1"])
    assert isinstance(webhook.send(make_delivery(), "key-1"), Sent)
    with httpx.Client() as client:  # the user's own request, outside any send, is left alone
        client.post(http_server.url("/mine?q=visible"))
    lines = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert [
        f'HTTP Request: POST http://127.0.0.1:{http_server.port}/[redacted] "HTTP/1.0 200 OK"',
        f'HTTP Request: POST http://127.0.0.1:{http_server.port}/mine?q=visible "HTTP/1.0 200 OK"',
    ] == lines


#: Keys that cannot be an HTTP header value: header injection, control and
#: non-ASCII characters, and whitespace a server would strip.
UNSENDABLE_KEYS = ["a\r\nX-Injected: 1", "a\nb", "a\x01b", "a\x7fb", "clé", " zq", "zq "]


@pytest.mark.parametrize("key", UNSENDABLE_KEYS)
def test_a_key_that_cannot_be_a_header_fails_for_good_without_connecting(
    http_server: HTTPTestServer, key: str
) -> None:
    """Such a key (written before notify() refused it) is a permanent failure, never unknown.

    Nothing is connected: retrying cannot make the key sendable, and a
    request cut off mid-headers would leave the outcome unknown.
    """
    result = channel(http_server.url()).send(make_delivery(), key)
    assert isinstance(result, PermanentFailure)
    assert "idempotency key cannot be sent as a header value" in result.message
    assert key.strip() not in result.message
    assert ([], []) == (http_server.connections, http_server.received)


@pytest.mark.parametrize("key", UNSENDABLE_KEYS)
def test_check_delivery_refuses_a_key_that_cannot_be_a_header(key: str) -> None:
    """The notify-time check names the field and never repeats the key."""
    delivery = kit_delivery(idempotency_key=key)
    with pytest.raises(InvalidDeliveryError) as raised:
        channel("https://example.com/hook").check_delivery(delivery)
    assert "idempotency_key" == raised.value.field
    assert key.strip() not in str(raised.value)


@pytest.mark.parametrize("key", ["k", "order 42", "chimeway.resend:" + "0" * 36, "~" * 255])
def test_check_delivery_accepts_a_key_that_can_be_a_header(key: str) -> None:
    """Visible ASCII with inner spaces passes, up to the ledger's 255 characters."""
    channel("https://example.com/hook").check_delivery(kit_delivery(idempotency_key=key))
