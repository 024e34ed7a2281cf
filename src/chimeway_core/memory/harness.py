"""The memory backend in ``chimeway selftest --app``: chimeway's own in-process queue."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from chimeway_core.backend import Backend
from chimeway_core.store import SQLStore

if TYPE_CHECKING:
    from chimeway_core.testing.conformance import EngineFactory
    from chimeway_core.testing.stateful import MachineHarness

__all__ = ["open_memory_harness"]


@contextmanager
def open_memory_harness(
    backend: Backend,
    store: SQLStore,
    engine_factory: EngineFactory,
    queue: str,
    *,
    time_limit: float,
) -> Iterator[MachineHarness]:
    """A :class:`~chimeway_core.testing.conformance.MemoryHarness` on ``store``, in virtual time.

    An in-process queue has nothing of the application's to share: a new
    one serves the tests, on the application's database (``store``).
    """
    # Lazy: the testing kit needs pytest, which the command line does not.
    from chimeway_core.testing.conformance import MemoryHarness  # noqa: PLC0415

    del backend, queue, time_limit
    yield MemoryHarness(store, engine_factory=engine_factory)
