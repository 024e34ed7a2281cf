"""The claimable rule's Python form and its SQL twin agree, on both databases.

Hypothesis writes deliveries with every combination that matters to the rule
(each status; due, just due and not due; no lease, a live one, a lapsed one;
attempts left or not; expiry unset, past or future), each time on the
boundary ``== now`` too, then asks the database which rows each rule's SQL
selects and compares with the Python predicate on the deliveries read back.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, insert, select

from chimeway_core.ledger import claimable as rules
from chimeway_core.ledger.statements import DELIVERIES, D
from chimeway_core.records import NewDelivery
from chimeway_core.states import DeliveryStatus
from chimeway_core.store import SQLStore

# Around now, on the boundary included: the rule compares with <= and <.
_OFFSETS = st.sampled_from([-2.0, -0.000001, 0.0, 0.000001, 2.0]).map(
    lambda s: timedelta(seconds=s)
)


@st.composite
def _rows(draw: st.DrawFn, now: datetime) -> dict[str, Any]:
    """One deliveries-table row, its fields around the rule's boundaries."""
    leased = draw(st.booleans())
    max_attempts = draw(st.integers(min_value=1, max_value=3))
    expires = draw(st.none() | _OFFSETS)
    delivery_id = uuid.uuid4()
    return {
        "id": delivery_id,
        "channel": "c",
        "recipient": "r",
        "payload": None,
        "notification_key": None,
        "idempotency_key": str(delivery_id),
        "status": draw(st.sampled_from(DeliveryStatus)).value,
        "reason": None,
        "attempt_count": draw(st.integers(min_value=0, max_value=max_attempts)),
        "max_attempts": max_attempts,
        "scheduled_at": now + draw(_OFFSETS),
        "expires_at": None if expires is None else now + expires,
        "lease_owner": "w" if leased else None,
        "lease_expires_at": now + draw(_OFFSETS) if leased else None,
        "version": 1,
        "deferral_count": 0,
        "metadata": {},
        "created_at": now,
        "updated_at": now,
    }


RULES = [
    rules.CLAIMABLE,
    rules.UNCONTESTED,
    rules.QUICKLY_CLAIMABLE,
    *rules.QUICKLY_CLAIMABLE.parts,
    rules.LEASE_FREE,
    rules.LEASE_LAPSED,
]


@pytest.mark.parametrize("rule", RULES, ids=[rule.name for rule in RULES])
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=40)
@given(data=st.data())
def test_python_and_sql_forms_agree(
    store: SQLStore, now: datetime, rule: rules.Condition, data: st.DataObject
) -> None:
    """Every delivery the Python form says holds is exactly what the SQL form selects."""
    rows = data.draw(st.lists(_rows(now), min_size=1, max_size=8))
    try:
        with store.engine.begin() as conn:
            conn.execute(insert(DELIVERIES), rows)
        deliveries = store.find(limit=len(rows))
        assert len(rows) == len(deliveries)
        expected = {d.id for d in deliveries if rule.holds(d, now)}
        with store.engine.begin() as conn:
            selected = set(conn.scalars(select(D.id).where(rule.where(now))))
        assert expected == selected
    finally:
        with store.engine.begin() as conn:
            conn.execute(delete(DELIVERIES))


def test_claimable_says_what_the_claim_takes(store: SQLStore, now: datetime) -> None:
    """A fresh delivery is claimable and claimed; held, the lease is the unmet condition."""
    fresh = store.create(NewDelivery(channel="c", recipient="r"), now=now).delivery
    assert rules.claimable(fresh, now)
    assert store.claim(fresh.id, owner="w", lease_seconds=30.0, now=now) is not None
    held = store.get(fresh.id)
    assert held is not None
    assert (False, rules.LEASE_FREE) == (rules.claimable(held, now), rules.unmet(held, now))
    assert rules.UNLEASED is rules.unmet(held, now + timedelta(minutes=5), rules.UNCONTESTED)
    assert store.claim(fresh.id, owner="v", lease_seconds=30.0, now=now) is None
