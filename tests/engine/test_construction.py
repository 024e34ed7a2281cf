"""An engine built from a wrong part refuses at construction, naming the part."""

from __future__ import annotations

import math
from typing import Any

import pytest

from chimeway_backends.memory import MemoryBackend
from chimeway_core import Chimeway, RetryPolicy, SQLStore
from chimeway_core.testing import FakeChannel


@pytest.fixture
def parts() -> dict[str, Any]:
    """A valid set of the engine's required parts (a SQLite ledger in memory)."""
    return {
        "store": SQLStore("sqlite://"),
        "backend": MemoryBackend(),
        "channels": {"sms": FakeChannel()},
    }


class _NoSend:
    guarantee = FakeChannel().guarantee
    exception_class = FakeChannel().exception_class
    timeout = 10.0


def _slow(timeout: object) -> FakeChannel:
    channel = FakeChannel()
    channel.timeout = timeout  # type: ignore[assignment]
    return channel


WRONG = [
    pytest.param({"store": "sqlite://"}, TypeError, "store must be a SQLStore", id="store-url"),
    pytest.param({"backend": object()}, TypeError, "backend must have enqueue", id="backend"),
    pytest.param({"channels": [FakeChannel()]}, TypeError, "channels must be a mapping", id="list"),
    pytest.param({"channels": {"": FakeChannel()}}, TypeError, "channel name", id="empty-name"),
    pytest.param({"channels": {1: FakeChannel()}}, TypeError, "channel name", id="int-name"),
    pytest.param({"channels": {"sms": _NoSend()}}, TypeError, "'sms' must have", id="no-send"),
    pytest.param({"channels": {"sms": _slow("10")}}, TypeError, "timeout must be a", id="str-t"),
    pytest.param(
        {"channels": {"sms": _slow(0)}},
        ValueError,
        "timeout must be a finite number of seconds > 0",
        id="zero-t",
    ),
    pytest.param({"channels": {"sms": _slow(math.inf)}}, ValueError, "finite", id="inf-t"),
    pytest.param({"policies": [object()]}, TypeError, "a policy must have", id="policy"),
    pytest.param({"retry": 3}, TypeError, "retry must be a RetryPolicy", id="retry"),
    pytest.param({"channel_retry": {"smss": RetryPolicy()}}, ValueError, "'smss'", id="retry-typo"),
    pytest.param({"channel_retry": {"sms": 3}}, TypeError, r"channel_retry\['sms'\]", id="r-3"),
    pytest.param(
        {"channel_retry": ["sms"]}, TypeError, "channel_retry must be a mapping", id="r-l"
    ),
    pytest.param({"clock": 5}, TypeError, "clock must have now", id="clock"),
    pytest.param({"telemetry": print}, TypeError, "telemetry must be a Telemetry", id="tel"),
    pytest.param({"rand": 0.5}, TypeError, "rand must be callable", id="rand"),
    pytest.param({"lease_margin": 0}, ValueError, "lease_margin", id="margin"),
    pytest.param({"relay_grace": -1}, ValueError, "relay_grace", id="grace"),
    pytest.param({"requeue_after": math.nan}, ValueError, "requeue_after", id="requeue"),
    pytest.param({"max_deferrals": -1}, ValueError, "max_deferrals", id="deferrals"),
    pytest.param({"lease_margin": "30"}, TypeError, "lease_margin must be a number", id="m-s"),
    pytest.param({"relay_grace": math.inf}, ValueError, "relay_grace must be a finite", id="g-i"),
    pytest.param({"max_deferrals": 2.0}, TypeError, "max_deferrals must be an int", id="d-f"),
]


@pytest.mark.parametrize(("change", "error", "message"), WRONG)
def test_a_wrong_part_is_refused_by_name(
    parts: dict[str, Any], change: dict[str, Any], error: type[Exception], message: str
) -> None:
    """Each wrong part raises its own error, at construction, with the part in the message."""
    with pytest.raises(error, match=message):
        Chimeway(**{**parts, **change})


def test_the_parts_it_accepts(parts: dict[str, Any]) -> None:
    """Valid parts build an engine; no channels at all is allowed (a rescuer's engine)."""
    engine = Chimeway(**parts, channel_retry={"sms": RetryPolicy(max_attempts=2)})
    assert 2 == engine.channel_retry["sms"].max_attempts
    assert {} == Chimeway(parts["store"], parts["backend"], {}).channels


def test_its_channels_are_fixed_at_construction(parts: dict[str, Any]) -> None:
    """channels and channel_retry are read-only, and the caller's dicts are copied."""
    channels = dict(parts["channels"])
    engine = Chimeway(**{**parts, "channels": channels}, channel_retry={"sms": RetryPolicy()})
    channels["late"] = channels["sms"]  # the caller's dict changes, the engine's does not
    assert "late" not in engine.channels
    with pytest.raises(TypeError):
        engine.channels["late"] = channels["sms"]  # type: ignore[index]
    with pytest.raises(TypeError):
        engine.channel_retry["sms"] = RetryPolicy()  # type: ignore[index]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("retention", 1.0),  # below min_retention: every rescue would raise
        ("lease_margin", -5.0),
        ("channels", {}),
        ("policies", ()),
    ],
)
def test_its_settings_cannot_be_rebound(parts: dict[str, Any], name: str, value: object) -> None:
    """Assigning a setting after construction raises, past no check; the old one stays."""
    engine = Chimeway(**parts)
    before = getattr(engine, name)
    with pytest.raises(AttributeError, match=f"Chimeway.{name} is fixed when the engine is built"):
        setattr(engine, name, value)
    assert before is getattr(engine, name)
    engine.note = "an attribute of the application's own"  # type: ignore[attr-defined]


def test_its_collaborators_can_be_replaced_by_doubles(parts: dict[str, Any]) -> None:
    """store, backend, clock and telemetry stay assignable: a test swaps in a double."""
    engine = Chimeway(**parts)
    backend = MemoryBackend()
    engine.backend = backend
    assert backend is engine.backend


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"url_or_engine": None}, TypeError, "database URL"),
        ({"url_or_engine": "sqlite://", "max_payload_bytes": 0}, ValueError, "max_payload"),
        ({"url_or_engine": "sqlite://", "max_response_bytes": 1.5}, ValueError, "max_response"),
        ({"url_or_engine": "sqlite://", "max_error_chars": -1}, ValueError, "max_error_chars"),
    ],
)
def test_a_store_refuses_a_wrong_url_or_limit(
    arguments: dict[str, Any], error: type[Exception], message: str
) -> None:
    """SQLStore names a URL that is neither a str nor an Engine, and a limit below 1."""
    with pytest.raises(error, match=message):
        SQLStore(**arguments)
