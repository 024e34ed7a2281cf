"""The chimeway pytest plugin, registered through the ``pytest11`` entry point.

Installing chimeway makes these fixtures available in every test suite:

- ``chimeway_clock``: a :class:`~chimeway_core.clock.VirtualClock`.
- ``chimeway_store``: a ledger on a fresh SQLite file, tables created.
- ``chimeway_backend``: a :class:`~chimeway_core.memory.MemoryBackend` on
  the virtual clock; ``chimeway_backend.run_until_idle(engine)`` drains it.
- ``chimeway_channel``: a :class:`~chimeway_core.testing.FakeChannel` that
  always sends (set ``chimeway_channel.script`` to script it).
- ``chimeway_engine``: a :class:`~chimeway_core.engine.Chimeway` wiring them,
  with the channel registered as ``"fake"`` and retries 1 s apart.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from chimeway_core.clock import VirtualClock
from chimeway_core.engine import Chimeway
from chimeway_core.memory import MemoryBackend
from chimeway_core.retry import RetryPolicy
from chimeway_core.store import SQLStore
from chimeway_core.testing.fakes import FakeChannel

__all__ = [
    "chimeway_backend",
    "chimeway_channel",
    "chimeway_clock",
    "chimeway_engine",
    "chimeway_store",
]


@pytest.fixture
def chimeway_clock() -> VirtualClock:
    """A virtual clock; advance it with ``.advance(seconds)``."""
    return VirtualClock()


@pytest.fixture
def chimeway_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SQLStore]:
    """A ledger on a fresh SQLite file."""
    store = SQLStore(f"sqlite:///{tmp_path_factory.mktemp('chimeway') / 'ledger.db'}")
    store.create_all()
    yield store
    store.engine.dispose()


@pytest.fixture
def chimeway_backend(chimeway_clock: VirtualClock) -> MemoryBackend:
    """The in-memory backend on the virtual clock."""
    return MemoryBackend(chimeway_clock)


@pytest.fixture
def chimeway_channel(chimeway_clock: VirtualClock) -> FakeChannel:
    """A fake channel that sends every time until its ``script`` says otherwise."""
    return FakeChannel(clock=chimeway_clock)


@pytest.fixture
def chimeway_engine(
    chimeway_store: SQLStore,
    chimeway_backend: MemoryBackend,
    chimeway_channel: FakeChannel,
    chimeway_clock: VirtualClock,
) -> Chimeway:
    """An engine on the memory backend with ``chimeway_channel`` as channel ``"fake"``."""
    return Chimeway(
        chimeway_store,
        chimeway_backend,
        {"fake": chimeway_channel},
        retry=RetryPolicy(max_attempts=3, initial_delay=1.0, backoff_factor=1.0, jitter=0.0),
        clock=chimeway_clock,
    )
