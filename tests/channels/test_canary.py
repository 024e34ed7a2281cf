"""No channel leaks the payload or the recipient into logs, errors, results or telemetry.

A canary string is put in the payload and in the recipient; every channel's
success and failure paths run with logging captured at DEBUG and a telemetry
subscriber recording everything the engine would emit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import pytest

from chimeway_core.channels import CallableChannel, LogChannel, SMTPChannel, WebhookChannel
from chimeway_core.channels.base import Channel
from chimeway_core.errors import OutcomeUnknownError
from chimeway_core.outcomes import Sent, TemporaryFailure, classify
from chimeway_core.records import Delivery
from chimeway_core.telemetry import LoggingSubscriber, MetaValue, Telemetry, TelemetryEvent

from .conftest import (
    ANY_PORT,
    CANARY,
    HTTPTestServer,
    Reply,
    SMTPTestServer,
    free_port,
    make_delivery,
)

# aiosmtpd (the *test server*) logs envelopes on its own logger; it is not chimeway.
SERVER_LOGGERS = ("mail.log",)


@pytest.fixture
def recorded(caplog: pytest.LogCaptureFixture) -> list[Mapping[str, MetaValue]]:
    """Capture logs at DEBUG; return the list telemetry metadata is recorded into."""
    caplog.set_level(logging.DEBUG)
    return []


def canary_delivery() -> Delivery:
    """A delivery whose payload and recipient both hold the canary."""
    return make_delivery(
        payload={"secret": CANARY, "order": 42, "note": f"for {CANARY}"},
        recipient=f"{CANARY}@example.com",
    )


def run(channel: Channel, events: list[Mapping[str, MetaValue]]) -> list[str]:
    """Send through ``channel`` as the engine would; return every text it produced."""
    telemetry = Telemetry()
    telemetry.subscribe(lambda event, meta: events.append(meta))
    telemetry.subscribe(LoggingSubscriber(level=logging.DEBUG))
    delivery = canary_delivery()
    texts: list[str] = []
    try:
        with telemetry.span("perform", {"delivery_id": delivery.id, "payload": delivery.payload}):
            result: object = channel.send(delivery, "idem-key")
    except OutcomeUnknownError as error:
        result = error
        texts += [str(error), repr(error), str(error.__cause__), repr(error.__cause__)]
    classification = classify(result, exception_class=channel.exception_class)
    texts += [repr(result), repr(classification)]
    telemetry.emit(
        TelemetryEvent.ATTEMPT_RECORDED,
        {
            "delivery_id": delivery.id,
            "channel": delivery.channel,
            "outcome": classification.outcome,
            "error_class": classification.error_class,
            "reason": classification.error,
            "payload": delivery.payload,
            "recipient": delivery.recipient,
            "provider_response": classification.provider_response,
        },
    )
    texts += [repr(meta) for meta in events]
    return texts


def log_texts(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Message, args, extra and traceback of every captured record."""
    formatter = logging.Formatter()
    texts = []
    for record in caplog.records:
        if record.name.startswith(SERVER_LOGGERS):
            continue
        texts += [record.getMessage(), repr(record.args), repr(vars(record))]
        if record.exc_info:
            texts.append(formatter.formatException(record.exc_info))
    return texts


def assert_no_canary(texts: list[str], caplog: pytest.LogCaptureFixture) -> None:
    """Fail if the canary appears anywhere."""
    leaks = [t for t in [*texts, *log_texts(caplog)] if CANARY in t]
    assert [] == leaks


def webhook(server: HTTPTestServer, address: str = "127.0.0.1") -> WebhookChannel:
    """A webhook whose URL host is built from the recipient, as url_for often does."""
    return WebhookChannel(
        lambda d: f"http://{d.recipient.split('@')[0]}.example.test:{server.port}/hook",
        allow_networks=["127.0.0.1/32"],
        allow_ports=ANY_PORT,
        resolver=lambda host, port: [address],
        read_timeout=0.3,
    )


@pytest.mark.parametrize(
    "reply",
    [Reply(200, {"X-Message-Id": "m-1"}), Reply(503, {"Retry-After": "5"}), Reply(404)],
)
def test_webhook_answers_leak_nothing(
    http_server: HTTPTestServer,
    caplog: pytest.LogCaptureFixture,
    recorded: list[Mapping[str, MetaValue]],
    reply: Reply,
) -> None:
    """Success, temporary and permanent webhook answers leak nothing."""
    http_server.replies["/hook"] = reply
    texts = run(webhook(http_server), recorded)
    assert CANARY in http_server.received[0].body.decode()  # the canary did travel
    assert_no_canary(texts, caplog)


@pytest.mark.parametrize("action", ["hang", "close"])
def test_webhook_unknown_outcomes_leak_nothing(
    http_server: HTTPTestServer,
    caplog: pytest.LogCaptureFixture,
    recorded: list[Mapping[str, MetaValue]],
    action: str,
) -> None:
    """A read timeout or a dropped connection leaks nothing in the raised error."""
    http_server.replies["/hook"] = Reply(action=action)
    assert_no_canary(run(webhook(http_server), recorded), caplog)


def test_webhook_refusals_leak_nothing(
    http_server: HTTPTestServer,
    caplog: pytest.LogCaptureFixture,
    recorded: list[Mapping[str, MetaValue]],
) -> None:
    """An SSRF refusal and a refused connection leak nothing."""
    texts = run(webhook(http_server, address="10.0.0.1"), recorded)
    texts += run(
        WebhookChannel(
            lambda d: f"http://{d.recipient.split('@')[0]}.test:{free_port()}/",
            allow_private=True,
            allow_ports=ANY_PORT,
            resolver=lambda host, port: ["127.0.0.1"],
        ),
        recorded,
    )
    assert_no_canary(texts, caplog)


def smtp(port: int, **kwargs: object) -> SMTPChannel:
    """An SMTP channel whose subject and body do not quote the payload."""
    return SMTPChannel(
        "127.0.0.1",
        port,
        sender="noreply@chimeway.test",
        subject_for=lambda d: "Hello",
        body_for=lambda d: f"Order {d.payload['order']}",
        timeout=0.2,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    "rcpt_reply",
    [
        None,
        f"550 5.1.1 <{CANARY}@example.com>: Recipient address rejected",
        f"451 4.7.1 <{CANARY}@example.com> greylisted",
        f"554 5.7.1 <{CANARY}@example.com> relay denied",
    ],
)
def test_smtp_replies_leak_nothing(
    smtp_server: SMTPTestServer,
    caplog: pytest.LogCaptureFixture,
    recorded: list[Mapping[str, MetaValue]],
    rcpt_reply: str | None,
) -> None:
    """Accepted, bounced, temporary and permanent replies quoting the address leak nothing."""
    if rcpt_reply is not None:
        smtp_server.handler.rcpt_replies[f"{CANARY}@example.com"] = rcpt_reply
    assert_no_canary(run(smtp(smtp_server.port), recorded), caplog)


@pytest.mark.parametrize("action", ["sleep", "close"])
def test_smtp_unknown_outcomes_leak_nothing(
    smtp_server: SMTPTestServer,
    caplog: pytest.LogCaptureFixture,
    recorded: list[Mapping[str, MetaValue]],
    action: str,
) -> None:
    """A stall or drop after DATA leaks nothing in the raised error."""
    smtp_server.handler.data_action = action
    assert_no_canary(run(smtp(smtp_server.port), recorded), caplog)


def test_smtp_refused_connection_leaks_nothing(
    caplog: pytest.LogCaptureFixture, recorded: list[Mapping[str, MetaValue]]
) -> None:
    """A refused SMTP connection leaks nothing."""
    assert_no_canary(run(smtp(free_port()), recorded), caplog)


@pytest.mark.parametrize(
    "channel_factory",
    [
        LogChannel,
        lambda: CallableChannel(lambda d, k: Sent(provider_response={"id": "x"})),
        lambda: CallableChannel(lambda d, k: TemporaryFailure("busy")),
    ],
)
def test_log_and_callable_channels_leak_nothing(
    caplog: pytest.LogCaptureFixture,
    recorded: list[Mapping[str, MetaValue]],
    channel_factory: Callable[[], Channel],
) -> None:
    """The log channel and a well-behaved callable leak nothing."""
    assert_no_canary(run(channel_factory(), recorded), caplog)
