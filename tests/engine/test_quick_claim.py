"""perform()'s one-statement claim on PostgreSQL claims exactly what the locked path would.

With no policy but expiry, perform() first tries ``SQLStore.quick_claim``
and falls back to the lock. The property: over every shape a delivery row
can be in when its job runs (status, due or not, leased or not, attempts
left, in flight, expiry, a channel the engine knows), the quick claim takes
the lease exactly when the locked path's checks would claim, and writes the
same lease, attempt and row.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, update

from chimeway_backends.memory import MemoryBackend
from chimeway_core import CallableChannel, Sent, VirtualClock
from chimeway_core.engine import Chimeway, _Claimed
from chimeway_core.errors import IllegalTransitionError, UnknownChannelError
from chimeway_core.policies import ReadStatePolicy
from chimeway_core.records import Claim, NewDelivery
from chimeway_core.schema import AttemptRow, DeliveryRow
from chimeway_core.states import DeliveryStatus
from chimeway_core.store import SQLStore

from .conftest import START

pytestmark = pytest.mark.postgres


class _RollBackError(Exception):
    pass


def _engine(store: SQLStore, clock: VirtualClock) -> Chimeway:
    channels = {
        "sms": CallableChannel(lambda _d, _k: Sent(), timeout=5.0),
        "email": CallableChannel(lambda _d, _k: Sent(), timeout=20.0),
    }
    return Chimeway(store, MemoryBackend(clock), channels, clock=clock)


def _locked_path_claim(engine: Chimeway, delivery_id: UUID, now: datetime) -> Claim | None:
    """What the locked path would claim, rolled back so that the row is as it was."""
    claim: Claim | None = None
    try:
        with engine.store.lock(delivery_id) as locked:
            assert locked.delivery is not None
            try:
                admitted = engine._admit(locked, locked.delivery, now)
            # An unknown channel raises; so does exhausting a ready row with no
            # attempt left, a row no engine writes but this test does.
            except (UnknownChannelError, IllegalTransitionError):
                admitted = None
            if isinstance(admitted, _Claimed):
                claim = admitted.claim
            raise _RollBackError
    except _RollBackError:
        pass
    return claim


def _at(now: datetime, offset: float | None) -> datetime | None:
    return None if offset is None else now + timedelta(seconds=offset)


# Each field: values under which the locked path claims, then values under
# which it does not. An example starts claimable and breaks up to two fields,
# so both sides of every condition (and their pairs) are drawn often.
CLAIMABLE: dict[str, list[Any]] = {
    "status": [DeliveryStatus.READY, DeliveryStatus.FAILED],
    "channel": ["sms", "email"],
    "due": [-60.0, 0.0],
    "lease": [None],
    "attempts": [0, 1],
    "expires": [None, 60.0],
    "in_flight": [False],
}
BLOCKING: dict[str, list[Any]] = {
    "status": [DeliveryStatus.SUCCEEDED, DeliveryStatus.CANCELLED, DeliveryStatus.SUPPRESSED],
    "channel": ["fax"],
    "due": [60.0],
    "lease": [-60.0, 60.0],
    "attempts": [2, 3],
    "expires": [-60.0, 0.0],
    "in_flight": [True],
}


@st.composite
def _row_shapes(draw: st.DrawFn) -> dict[str, Any]:
    broken = draw(st.sets(st.sampled_from(sorted(CLAIMABLE)), max_size=2))
    return {
        name: draw(st.sampled_from(BLOCKING[name] if name in broken else CLAIMABLE[name]))
        for name in CLAIMABLE
    }


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(shape=_row_shapes())
def test_quick_claim_claims_what_the_lock_would(pg_store: SQLStore, shape: dict[str, Any]) -> None:
    """Same decision, same lease, same row, same attempt: the quick claim is only a shortcut."""
    clock = VirtualClock(START)
    engine = _engine(pg_store, clock)
    now = clock.now()
    delivery = pg_store.create(
        NewDelivery(channel="sms", recipient="r", max_attempts=2), now=now
    ).delivery
    attempts = shape["attempts"]
    values: dict[str, Any] = {
        "status": shape["status"].value,
        "channel": shape["channel"],
        "scheduled_at": now + timedelta(seconds=shape["due"]),
        "lease_owner": None if shape["lease"] is None else "someone",
        "lease_expires_at": _at(now, shape["lease"]),
        "attempt_count": attempts,
        "expires_at": _at(now, shape["expires"]),
    }
    with pg_store.engine.begin() as conn:
        conn.execute(update(DeliveryRow).where(DeliveryRow.id == delivery.id).values(values))
        if shape["in_flight"]:
            conn.execute(
                insert(AttemptRow).values(
                    delivery_id=delivery.id, number=attempts + 1, started_at=now, worker="x"
                )
            )
    expected = _locked_path_claim(engine, delivery.id, now)
    lease_seconds = {name: c.timeout + engine.lease_margin for name, c in engine.channels.items()}
    got = pg_store.quick_claim(
        delivery.id, owner=engine._owner(), lease_seconds=lease_seconds, now=now
    )
    assert expected == got


def test_perform_with_another_policy_never_claims_quickly(pg_store: SQLStore) -> None:
    """Any policy but expiry must see the row under the lock: perform() skips the quick claim."""
    clock = VirtualClock(START)
    plain = _engine(pg_store, clock)
    quiet = Chimeway(
        pg_store,
        MemoryBackend(clock),
        plain.channels,
        clock=clock,
        policies=(ReadStatePolicy(lambda _d: False),),
    )
    assert (True, False) == (plain._claims_quickly(), quiet._claims_quickly())


def test_quick_claim_refuses_a_bad_lease(pg_store: SQLStore) -> None:
    """A lease that is not a positive, finite number of seconds is refused before any write."""
    delivery = pg_store.create(NewDelivery(channel="sms", recipient="r"), now=START).delivery
    for seconds in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="lease_seconds"):
            pg_store.quick_claim(delivery.id, owner="w", lease_seconds={"sms": seconds}, now=START)
    history = pg_store.history(delivery.id)
    assert history is not None
    assert (0, ()) == (history.delivery.attempt_count, history.attempts)


def test_quick_claim_is_never_taken_on_sqlite(sqlite_store: SQLStore) -> None:
    """SQLite claims under its write lock: quick_claim returns None and writes nothing."""
    delivery = sqlite_store.create(NewDelivery(channel="sms", recipient="r"), now=START).delivery
    assert sqlite_store.claims_in_one_statement is False
    assert None is sqlite_store.quick_claim(
        delivery.id, owner="w", lease_seconds={"sms": 30.0}, now=START
    )
    history = sqlite_store.history(delivery.id)
    assert history is not None
    assert 0 == history.delivery.attempt_count
