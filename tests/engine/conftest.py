"""Fixtures for engine tests: an engine on the memory backend, SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from chimeway_backends.memory import MemoryBackend
from chimeway_core import RetryPolicy, VirtualClock
from chimeway_core.channels.base import Channel
from chimeway_core.engine import Chimeway
from chimeway_core.policies import Policy
from chimeway_core.store import SQLStore
from chimeway_core.telemetry import Telemetry

START = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

#: initial 10 s, doubling, no jitter: attempt n waits 10 * 2 ** (n - 1) seconds.
RETRY = RetryPolicy(max_attempts=5, initial_delay=10.0, backoff_factor=2.0, jitter=0.0)

MakeEngine = Callable[..., Chimeway]


@pytest.fixture
def clock() -> VirtualClock:
    """A virtual clock at a fixed start."""
    return VirtualClock(START)


@pytest.fixture
def backend(clock: VirtualClock) -> MemoryBackend:
    """The in-memory backend on the virtual clock."""
    return MemoryBackend(clock)


@pytest.fixture
def make_engine(
    store: SQLStore,
    backend: MemoryBackend,
    clock: VirtualClock,
) -> MakeEngine:
    """Build an engine on the store under test with the given channels and options."""

    def make(
        channels: dict[str, Channel],
        *,
        policies: tuple[Policy, ...] = (),
        retry: RetryPolicy = RETRY,
        telemetry: Telemetry | None = None,
        **options: object,
    ) -> Chimeway:
        return Chimeway(
            store,
            backend,
            channels,
            policies=policies,
            retry=retry,
            clock=clock,
            telemetry=telemetry,
            **options,  # type: ignore[arg-type]
        )

    return make
