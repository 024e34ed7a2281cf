"""notify_many of a big batch: suppressed, created and repeated specs, each as alone."""

from __future__ import annotations

from sqlalchemy import func, select

from chimeway_backends.memory import MemoryBackend
from chimeway_core import NewDelivery, SQLStore
from chimeway_core.policies import ReadStatePolicy
from chimeway_core.records import JournalKind
from chimeway_core.schema import JournalRow
from chimeway_core.states import DeliveryStatus, Event
from chimeway_core.testing import FakeChannel
from tests.engine.conftest import MakeEngine


def _journal_entries(store: SQLStore) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(JournalRow)).scalar_one())


def test_a_mixed_batch_larger_than_a_chunk_keeps_every_guarantee(
    make_engine: MakeEngine, store: SQLStore, backend: MemoryBackend
) -> None:
    """Suppressed specs are written terminal with their policy's journal entry and no
    job; a key repeated in the batch or held already creates nothing; the rest are
    created, journaled and queued (their outbox rows deleted once queued); results
    come back in spec order."""
    engine = make_engine(
        {"sms": FakeChannel()},
        policies=(ReadStatePolicy(lambda d: d.recipient.endswith("7")),),
    )
    held = engine.notify("sms", "+held", {"n": -1}, idempotency_key="held")
    specs = [NewDelivery(channel="sms", recipient=f"+{i}", payload={"n": i}) for i in range(1_100)]
    specs[10] = NewDelivery(
        channel="sms", recipient="+held", payload={"n": -1}, idempotency_key="held"
    )
    specs[20] = NewDelivery(channel="sms", recipient="+twice", idempotency_key="twice")
    specs[30] = NewDelivery(channel="sms", recipient="+twice", idempotency_key="twice")
    delivered = engine.notify_many(specs)

    assert [spec.recipient for spec in specs] == [d.recipient for d in delivered]
    assert held == delivered[10]
    assert delivered[20] == delivered[30]
    found = {10, 30}
    assert [i in found for i in range(len(specs))] == [d.found_existing for d in delivered]
    suppressed = [d for d in delivered if d.status is DeliveryStatus.SUPPRESSED]
    live = [d for i, d in enumerate(delivered) if i not in found and not d.is_terminal]
    assert [d.recipient.endswith("7") for d in delivered] == [
        d.status is DeliveryStatus.SUPPRESSED for d in delivered
    ]
    history = engine.get(suppressed[0].id)
    assert [(JournalKind.CREATED, None), (JournalKind.TRANSITION, Event.SUPPRESS.value)] == [
        (entry.kind, entry.event) for entry in history.journal
    ]
    assert {"at": "notify", "policy": "read_state"} == history.journal[1].detail
    created = len(specs) - len(found) + 1  # and the held one
    assert created + len(suppressed) == _journal_entries(store)
    assert {d.id for d in live} | {held.id} == {job.delivery_id for job in backend.pending()}
