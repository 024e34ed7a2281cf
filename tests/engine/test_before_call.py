"""The backend is told, in the job's thread, when a claimed delivery's channel is called next."""

from __future__ import annotations

import logging

import pytest

from chimeway_backends.memory import MemoryBackend
from chimeway_core import DeliveryStatus, Sent, VirtualClock
from chimeway_core.engine import Chimeway
from chimeway_core.store import SQLStore
from chimeway_core.testing import FakeChannel


class _Told(MemoryBackend):
    """A memory backend that records what ``before_call`` is given, or fails in it."""

    def __init__(self, clock: VirtualClock, *, fail: bool = False) -> None:
        super().__init__(clock)
        self.fail = fail
        self.told: list[tuple[str, float, float, int]] = []
        self.channel: FakeChannel | None = None

    def before_call(self, channel: str, timeout: float, lease: float) -> None:
        """Record the call, with how many sends the channel had made by then."""
        assert self.channel is not None
        self.told.append((channel, timeout, lease, len(self.channel.calls)))
        if self.fail:
            raise RuntimeError("the backend's clock is broken")


def _engine(store: SQLStore, backend: _Told) -> Chimeway:
    channel = FakeChannel([Sent()], timeout=7.0)
    backend.channel = channel
    return Chimeway(store, backend, {"sms": channel}, clock=backend.clock, lease_margin=3.0)


def test_the_backend_hears_the_channel_timeout_and_lease_before_the_call(
    store: SQLStore, clock: VirtualClock
) -> None:
    """``before_call`` gets the channel's name, timeout and lease, once, before ``send``."""
    backend = _Told(clock)
    engine = _engine(store, backend)
    delivery = engine.notify("sms", "+15550100")
    backend.run_until_idle(engine, fail_fast=True)
    assert ([("sms", 7.0, 10.0, 0)], DeliveryStatus.SUCCEEDED) == (
        backend.told,
        engine.get(delivery.id).delivery.status,
    )


def test_a_failing_before_call_is_logged_and_the_call_goes_on(
    store: SQLStore, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """What ``before_call`` raises is logged; the delivery is still sent, once."""
    backend = _Told(clock, fail=True)
    engine = _engine(store, backend)
    delivery = engine.notify("sms", "+15550100")
    with caplog.at_level(logging.ERROR, logger="chimeway"):
        backend.run_until_idle(engine, fail_fast=True)
    assert backend.channel is not None
    assert (DeliveryStatus.SUCCEEDED, 1) == (
        engine.get(delivery.id).delivery.status,
        len(backend.channel.calls),
    )
    assert ["backend.before_call failed for channel 'sms'; calling it anyway"] == [
        r.getMessage() for r in caplog.records if r.name == "chimeway"
    ]
