"""Deeply nested JSON, from the application or from a provider, never breaks a contract.

Found by the hostile-input scenario: ``notify()`` promises a ChimewayError
for invalid input, and the store promises to record any provider response
(best effort, never raising). Nesting deeper than Python's recursion limit
broke both with a ``RecursionError``.
"""

from __future__ import annotations

import pytest

from chimeway_backends.memory import MemoryBackend
from chimeway_core.clock import VirtualClock
from chimeway_core.engine import Chimeway
from chimeway_core.errors import InvalidDeliveryError
from chimeway_core.outcomes import Sent
from chimeway_core.states import DeliveryStatus
from chimeway_core.store import SQLStore
from chimeway_core.testing import FakeChannel

DEPTH = 10_000


def _nested(depth: int) -> object:
    value: object = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return value


@pytest.mark.parametrize("field", ["payload", "metadata"])
def test_a_value_nested_too_deep_is_refused_with_a_chimeway_error(
    sqlite_store: SQLStore, field: str
) -> None:
    """A payload or metadata nested 10,000 levels deep is refused as invalid; nothing is written."""
    clock = VirtualClock()
    engine = Chimeway(sqlite_store, MemoryBackend(clock), {"c": FakeChannel()}, clock=clock)
    payload = _nested(DEPTH) if field == "payload" else None
    metadata = {"deep": _nested(DEPTH)} if field == "metadata" else None
    with pytest.raises(InvalidDeliveryError, match="nested"):
        engine.notify("c", "someone", payload, metadata=metadata)
    assert {} == sqlite_store.counts()


def test_a_provider_response_nested_too_deep_is_recorded(sqlite_store: SQLStore) -> None:
    """A send whose provider answers with a response nested 10,000 deep is recorded as sent."""
    clock = VirtualClock()
    backend = MemoryBackend(clock)
    channel = FakeChannel([Sent(provider_response={"deep": _nested(DEPTH)})], clock=clock)
    engine = Chimeway(sqlite_store, backend, {"c": channel}, clock=clock)
    delivery = engine.notify("c", "someone")
    backend.run_until_idle(engine, max_jobs=10)
    engine.flush_outbox()
    history = engine.get(delivery.id)
    assert (DeliveryStatus.SUCCEEDED, 1, []) == (
        history.delivery.status,
        len(history.attempts),
        backend.failures,
    )
