"""The bulk create: a batch is written whole, or the way that reads back each row."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from chimeway_core.errors import InvalidDeliveryError
from chimeway_core.ledger.validation import json_size, json_value, plain_json
from chimeway_core.records import JournalKind, NewDelivery
from chimeway_core.schema import DeliveryRow, JournalRow, OutboxRow
from chimeway_core.store import SQLStore


def _counts(store: SQLStore) -> tuple[int, int, int]:
    with store.engine.connect() as conn:
        return tuple(  # type: ignore[return-value]
            int(conn.execute(select(func.count()).select_from(table)).scalar_one())
            for table in (DeliveryRow, JournalRow, OutboxRow)
        )


def _spec(i: int, now: datetime) -> NewDelivery:
    # Every shape a row may take: keys given or not, timestamps in other zones,
    # payloads of every JSON kind, text beyond ASCII.
    zone = timezone(timedelta(hours=i % 5 - 2))
    return NewDelivery(
        channel="email" if i % 2 else "sms",
        recipient=f"user{i}@exämple.com",
        payload=[None, {"n": i, "ok": True}, [1, 2.5, "✓"], "text", 7][i % 5],
        notification_key=None if i % 3 else "welcome",
        idempotency_key=f"key-{i}" if i % 4 == 0 else None,
        max_attempts=1 + i % 7,
        scheduled_at=None if i % 2 else (now + timedelta(seconds=i)).astimezone(zone),
        expires_at=None if i % 3 else now.astimezone(zone) + timedelta(days=1),
        metadata={} if i % 2 else {"tenant": "acme", "i": i},
    )


def test_a_batch_larger_than_a_chunk_reads_back_as_returned(store: SQLStore, now: datetime) -> None:
    """Every delivery of a big fresh batch reads back equal to what was returned, in
    order, with one created journal entry and one outbox row due at its time."""
    specs = [_spec(i, now) for i in range(1_234)]
    results = store.create_many(specs, now=now)
    assert [True] * len(specs) == [result.created for result in results]
    assert [spec.recipient for spec in specs] == [r.delivery.recipient for r in results]
    for result in results[::97] + results[-3:]:
        assert result.delivery == store.get(result.delivery.id)
        history = store.history(result.delivery.id)
        assert history is not None
        assert [JournalKind.CREATED] == [entry.kind for entry in history.journal]
    assert (len(specs),) * 3 == _counts(store)
    relayed: list[Any] = []
    assert len(specs) == store.relay_outbox(relayed.extend, batch_size=2_000)
    due = {item.delivery_id: item.run_at for item in relayed}
    assert {r.delivery.id: r.delivery.scheduled_at for r in results} == due


def test_a_redrafted_batch_is_found_and_not_written_twice(store: SQLStore, now: datetime) -> None:
    """Drafts written a second time meet their own keys: nothing more is written and
    each comes back as found."""
    drafts = store.draft_many(
        [NewDelivery(channel="c", recipient=f"r{i}") for i in range(3)], now=now
    )
    first = store.create_many(drafts, now=now)
    again = store.create_many(drafts, now=now)
    assert ([True] * 3, [False] * 3) == (
        [r.created for r in first],
        [r.created for r in again],
    )
    assert [r.delivery for r in first] == [r.delivery for r in again]
    assert (3, 3, 3) == _counts(store)


def test_a_batch_meeting_a_held_key_writes_the_rest_once(store: SQLStore, now: datetime) -> None:
    """Fresh rows beside a key already held are written once each, with one journal
    entry and one outbox row apiece: the attempt that met the key left nothing."""
    held = store.create(NewDelivery(channel="c", recipient="old", idempotency_key="k"), now=now)
    specs = [NewDelivery(channel="c", recipient=f"r{i}") for i in range(600)]
    specs.insert(300, NewDelivery(channel="c", recipient="old", idempotency_key="k"))
    results = store.create_many(specs, now=now)
    assert [True] * 300 + [False] + [True] * 300 == [r.created for r in results]
    assert held.delivery == results[300].delivery
    assert (601, 601, 601) == _counts(store)


_JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=5) | st.integers(0, 3), inner, max_size=4)
    ),
    max_leaves=12,
)


def _full(value: Any) -> tuple[str, Any]:
    """What the full walk makes of ``value``: its error, or its copy's JSON and size."""
    try:
        copy = json_value(value, "payload")
    except InvalidDeliveryError as error:
        return "refused", (type(error), str(error))
    return "copied", (json.dumps(copy, sort_keys=True), json_size(copy))


def _one_pass(value: Any) -> tuple[str, Any]:
    """What plain_json makes of ``value``, in the same shape."""
    try:
        copy, size = plain_json(value, "payload")
    except InvalidDeliveryError as error:
        return "refused", (type(error), str(error))
    return "copied", (json.dumps(copy, sort_keys=True), size)


@given(_JSONISH)
def test_one_pass_validation_agrees_with_the_full_walk(value: Any) -> None:
    """plain_json refuses what json_value refuses, with the same error, and otherwise
    returns an equal copy (tuples as lists) and json_size's size."""
    assert _full(value) == _one_pass(value)


@pytest.mark.parametrize(
    "value",
    [
        {"text": "nul \x00 inside"},
        {"text": "a lone \ud800 surrogate"},
        {"n": 2**63},
        {"n": -(2**63)},
        {"n": 2**63 - 1},
        {"literal": "\\u0000 is text here"},
        {1: "an int key"},
        (1, 2),
        {"nan": float("nan")},
        {"inf": float("inf")},
    ],
)
def test_one_pass_validation_agrees_on_the_edges(value: Any) -> None:
    """The edges the one pass hands to the full walk come out as the full walk says."""
    assert _full(value) == _one_pass(value)


@pytest.mark.parametrize("deep", [127, 128, 129])
def test_one_pass_validation_keeps_the_depth_limit(deep: int) -> None:
    """Nesting at the limit passes and past it is refused, as by the full walk."""
    value: Any = 1
    for _ in range(deep):
        value = [value]
    assert ("refused" if deep > 128 else "copied", _full(value)) == (
        _one_pass(value)[0],
        _one_pass(value),
    )


def test_a_batch_meeting_a_held_key_in_the_callers_session_commits_with_it(
    store: SQLStore, now: datetime
) -> None:
    """In a caller's Session, a batch beside a held key is written once, the session
    stays usable, and it all appears on commit."""
    held = store.create(NewDelivery(channel="c", recipient="old", idempotency_key="k"), now=now)
    specs = [
        NewDelivery(channel="c", recipient="a"),
        NewDelivery(channel="c", recipient="old", idempotency_key="k"),
        NewDelivery(channel="c", recipient="b"),
    ]
    with Session(store.engine) as session:
        results = store.create_many(specs, now=now, session=session)
        later = store.create(NewDelivery(channel="c", recipient="z"), now=now, session=session)
        assert (1, 1, 1) == _counts(store)
        session.commit()
    assert [True, False, True] == [r.created for r in results]
    assert held.delivery == results[1].delivery
    assert later.delivery == store.get(later.delivery.id)
    assert (4, 4, 4) == _counts(store)
