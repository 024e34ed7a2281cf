"""The chimeway pytest plugin, registered through the ``pytest11`` entry point.

Installing chimeway makes these fixtures available in every test suite:

- ``chimeway_clock``: a :class:`~chimeway_core.clock.VirtualClock`.
- ``chimeway_store``: a ledger on a fresh SQLite file, tables created.
- ``chimeway_backend``: a :class:`~chimeway_core.memory.MemoryBackend` on
  the virtual clock; ``chimeway_backend.run_until_idle(engine)`` drains it.
- ``chimeway_channel``: a :class:`~chimeway_core.testing.FakeChannel` that
  always sends (set ``chimeway_channel.script`` to script it).
- ``chimeway_app``: the application's engine, or ``None``. Set the ini
  option ``chimeway_app = "myapp.notify:engine"`` (or override the fixture).
- ``chimeway_engine``: a :class:`~chimeway_core.engine.Chimeway` wiring them.
  Without ``chimeway_app``: the channel registered as ``"fake"``, retries 1 s
  apart. With it: the application's engine with each channel swapped for a
  fake of the same name (:func:`~chimeway_core.testing.engine_with_fakes`).
- ``chimeway_channels``: the engine's fake channels by name.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest

from chimeway_core.clock import VirtualClock
from chimeway_core.engine import Chimeway
from chimeway_core.loading import load_engine
from chimeway_core.memory import MemoryBackend
from chimeway_core.retry import RetryPolicy
from chimeway_core.store import SQLStore
from chimeway_core.testing.app import engine_with_fakes, fakes_of
from chimeway_core.testing.fakes import FakeChannel

__all__ = [
    "chimeway_app",
    "chimeway_backend",
    "chimeway_channel",
    "chimeway_channels",
    "chimeway_clock",
    "chimeway_engine",
    "chimeway_store",
    "pytest_addoption",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    """Declare the ``chimeway_app`` ini option."""
    parser.addini(
        "chimeway_app",
        "the application's engine as module:attribute; chimeway_engine becomes it, with fakes",
        default="",
    )


@pytest.fixture(scope="session")
def chimeway_app(pytestconfig: pytest.Config) -> Chimeway | None:
    """The engine the ``chimeway_app`` ini option names, loaded once; ``None`` without it."""
    target = str(pytestconfig.getini("chimeway_app")).strip()
    return load_engine(target) if target else None


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
    chimeway_app: Chimeway | None,
    chimeway_store: SQLStore,
    chimeway_backend: MemoryBackend,
    chimeway_channel: FakeChannel,
    chimeway_clock: VirtualClock,
) -> Chimeway:
    """The engine under test, on the test's ledger, memory backend and virtual clock.

    With ``chimeway_app``: the application's configuration, every channel a
    fake of the same name. Without: ``chimeway_channel`` as channel ``"fake"``.
    """
    if chimeway_app is not None:
        return engine_with_fakes(
            chimeway_app, store=chimeway_store, backend=chimeway_backend, clock=chimeway_clock
        )
    return Chimeway(
        chimeway_store,
        chimeway_backend,
        {"fake": chimeway_channel},
        retry=RetryPolicy(max_attempts=3, initial_delay=1.0, backoff_factor=1.0, jitter=0.0),
        clock=chimeway_clock,
    )


@pytest.fixture
def chimeway_channels(chimeway_engine: Chimeway) -> Mapping[str, FakeChannel]:
    """``chimeway_engine``'s fake channels by name: ``{"fake": chimeway_channel}`` if no app."""
    return fakes_of(chimeway_engine)
