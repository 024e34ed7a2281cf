"""Testing an application's own engine: its settings, fake channels, a test ledger and queue.

:func:`engine_with_fakes` builds what the pytest plugin's ``chimeway_engine``
is when ``chimeway_app`` names the application's engine: the same channel
names, routes, policies, retry policies and timings, with every channel
replaced by a :class:`~chimeway_core.testing.FakeChannel` of the same
guarantee and timeout, on the store, backend and clock the test gives.
"""

from __future__ import annotations

from collections.abc import Mapping

from chimeway_core.backend import Backend, SupportsEnqueue
from chimeway_core.clock import Clock, VirtualClock
from chimeway_core.engine import Chimeway
from chimeway_core.policies import ExpiryPolicy
from chimeway_core.store import SQLStore
from chimeway_core.telemetry import Telemetry
from chimeway_core.testing.fakes import FakeChannel

__all__ = ["engine_with_fakes", "fakes_of"]


def engine_with_fakes(
    engine: Chimeway,
    *,
    store: SQLStore,
    backend: Backend | SupportsEnqueue,
    clock: Clock | None = None,
    telemetry: Telemetry | None = None,
) -> Chimeway:
    """A copy of ``engine``'s configuration with a :class:`FakeChannel` for each channel.

    Each fake sends until its ``script`` says otherwise, with the guarantee
    and timeout of the channel it stands for, on ``clock`` (default: a new
    :class:`~chimeway_core.clock.VirtualClock`). Routes, policies, retry
    policies, ``lease_margin``, ``max_deferrals``, ``relay_grace``,
    ``requeue_after`` and ``retention`` are ``engine``'s. The store, backend
    and telemetry are the test's: nothing reaches the application's
    database, queue, providers or telemetry exporters. ``fakes_of(engine)``
    gives the fakes by channel name.
    """
    if not isinstance(engine, Chimeway):
        raise TypeError(f"engine must be a Chimeway, not {type(engine).__name__}")
    clock = VirtualClock() if clock is None else clock
    fakes = {
        name: FakeChannel(guarantee=channel.guarantee, timeout=channel.timeout, clock=clock)
        for name, channel in engine.channels.items()
    }
    # Every engine puts an ExpiryPolicy of its own first; the new engine adds its own.
    own, *policies = engine.policies
    assert isinstance(own, ExpiryPolicy)
    return Chimeway(
        store,
        backend,
        fakes,
        routes=engine.routes,
        policies=policies,
        retry=engine.retry,
        channel_retry=engine.channel_retry,
        clock=clock,
        telemetry=telemetry,
        lease_margin=engine.lease_margin,
        max_deferrals=engine.max_deferrals,
        relay_grace=engine.relay_grace.total_seconds(),
        requeue_after=engine.requeue_after.total_seconds(),
        retention=engine.retention,
    )


def fakes_of(engine: Chimeway) -> Mapping[str, FakeChannel]:
    """The engine's channels by name, each a :class:`FakeChannel` (else :class:`TypeError`)."""
    fakes: dict[str, FakeChannel] = {}
    for name, channel in engine.channels.items():
        if not isinstance(channel, FakeChannel):
            raise TypeError(f"channel {name!r} is a {type(channel).__name__}, not a FakeChannel")
        fakes[name] = channel
    return fakes
