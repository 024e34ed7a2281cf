"""CallableChannel, LogChannel and the Channel protocol."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from chimeway_core.channels import (
    CallableChannel,
    Channel,
    DeliveryGuarantee,
    LogChannel,
    SMTPChannel,
    WebhookChannel,
)
from chimeway_core.outcomes import ChannelResult, ErrorClass, Sent, TemporaryFailure
from chimeway_core.records import Delivery

from .conftest import make_delivery


def test_callable_channel_passes_delivery_and_key_through() -> None:
    """The wrapped function gets the delivery and key; its result comes back unchanged."""
    seen: list[tuple[Delivery, str]] = []

    def fn(delivery: Delivery, key: str) -> ChannelResult:
        seen.append((delivery, key))
        return TemporaryFailure("busy", 3.0)

    delivery = make_delivery()
    result = CallableChannel(fn).send(delivery, "k-1")
    assert (TemporaryFailure("busy", 3.0), [(delivery, "k-1")]) == (result, seen)


def test_callable_channel_settings() -> None:
    """Guarantee, exception class and timeout are the ones given."""
    channel = CallableChannel(
        lambda d, k: Sent(),
        guarantee=DeliveryGuarantee.AT_MOST_ONCE,
        exception_class=ErrorClass.PERMANENT,
        timeout=2.5,
    )
    expected = (DeliveryGuarantee.AT_MOST_ONCE, ErrorClass.PERMANENT, 2.5)
    assert expected == (channel.guarantee, channel.exception_class, channel.timeout)


def test_callable_channel_propagates_exceptions() -> None:
    """An exception from the function reaches the engine, which classifies it."""

    def boom(delivery: Delivery, key: str) -> ChannelResult:
        raise RuntimeError("provider down")

    with pytest.raises(RuntimeError, match="provider down"):
        CallableChannel(boom).send(make_delivery(), "k")


@pytest.mark.parametrize("timeout", [0, -1, float("inf"), float("nan")])
def test_callable_channel_rejects_bad_timeouts(timeout: float) -> None:
    """A timeout must be a positive finite number of seconds."""
    with pytest.raises(ValueError, match="timeout"):
        CallableChannel(lambda d, k: Sent(), timeout=timeout)


def test_log_channel_logs_safe_metadata_and_reports_sent(caplog: pytest.LogCaptureFixture) -> None:
    """The log line names the delivery and key, and the result is Sent."""
    delivery = make_delivery()
    with caplog.at_level(logging.INFO, logger="chimeway.channels.log"):
        result = LogChannel().send(delivery, "k-9")
    (record,) = caplog.records
    expected_meta = {
        "delivery_id": str(delivery.id),
        "channel": "test",
        "notification_key": "welcome",
        "idempotency_key": "k-9",
    }
    assert (Sent(provider_response={"logged": True}), expected_meta) == (
        result,
        record.__dict__["chimeway"],
    )


def test_builtins_satisfy_the_channel_protocol() -> None:
    """Every built-in channel is a Channel."""
    channels = [
        CallableChannel(lambda d, k: Sent()),
        LogChannel(),
        WebhookChannel("https://example.com/"),
        SMTPChannel("localhost", sender="a@b.test", subject_for=str, body_for=str),
    ]
    assert [True] * 4 == [isinstance(c, Channel) for c in channels]


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: CallableChannel(lambda _d, _k: Sent(), timeout="5"), TypeError, "timeout"),
        (lambda: CallableChannel(lambda _d, _k: Sent(), timeout=True), TypeError, "timeout"),
        (lambda: LogChannel(logger="chimeway"), TypeError, "logger must be a logging.Logger"),
        (lambda: LogChannel(level="INFO"), TypeError, "level must be an int"),
    ],
)
def test_simple_channels_name_a_wrong_argument(
    make: Callable[[], object], error: type[Exception], message: str
) -> None:
    """A timeout that is no number, a logger that is no Logger, a level that is no int."""
    with pytest.raises(error, match=message):
        make()
