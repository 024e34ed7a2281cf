"""The count lock: rate counts of one recipient's deliveries take turns with their claims."""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest
from sqlalchemy import Engine, text

from chimeway_core.ledger.dialects import rate_lock_key
from chimeway_core.records import Delivery, NewDelivery
from chimeway_core.store import SQLStore

HOUR = timedelta(hours=1)


def _new(store: SQLStore, now: datetime, channel: str, recipient: str) -> Delivery:
    return store.create(NewDelivery(channel=channel, recipient=recipient), now=now).delivery


def _count_then_claim(store: SQLStore, delivery: Delivery, now: datetime) -> int:
    """Count the recipient's attempts in ``delivery``'s lock, claim it, commit; the count."""
    with store.lock(delivery.id) as locked:
        seen = locked.recipient_attempts(delivery.recipient, None, now - HOUR)
        assert locked.claim(owner="w2", lease_seconds=30, now=now) is not None
    return seen


def _advisory_locks(store: SQLStore) -> int:
    """How many advisory locks the database holds now (seen from another connection)."""
    with store.engine.connect() as conn:
        query = text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")
        return int(conn.execute(query).scalar_one())


def _free(store: SQLStore, recipient: str, namespace: str | None = None) -> bool:
    """Whether another transaction could take ``recipient``'s count lock in ``namespace`` now."""
    with store.engine.begin() as conn:
        query = text("SELECT pg_try_advisory_xact_lock(:key)")
        return bool(conn.execute(query, {"key": rate_lock_key(namespace, recipient)}).scalar_one())


def test_the_key_is_stable_and_namespaced() -> None:
    """The key is a fixed function of the namespace and recipient: every process agrees."""
    assert -7065270786258473944 == rate_lock_key(None, "alice")
    assert 7184045632464080230 == rate_lock_key("tenant", "alice")
    assert 6979133780957945190 == rate_lock_key(None, "bob")


@pytest.mark.postgres
def test_a_count_waits_for_the_claim_of_the_count_before_it(
    pg_store: SQLStore, now: datetime
) -> None:
    """A second delivery's count waits for the first's commit, and then sees its attempt."""
    first = _new(pg_store, now, "email", "alice")
    second = _new(pg_store, now, "sms", "alice")
    with ThreadPoolExecutor(max_workers=1) as pool:
        with pg_store.lock(first.id) as locked:
            assert 0 == locked.recipient_attempts("alice", None, now - HOUR)
            assert locked.claim(owner="w1", lease_seconds=30, now=now) is not None
            later = pool.submit(_count_then_claim, pg_store, second, now)
            with pytest.raises(TimeoutError):
                later.result(timeout=0.5)  # it waits for this transaction's count lock
        assert 1 == later.result(timeout=10)


@pytest.mark.postgres
def test_only_a_count_takes_the_lock_and_only_one(pg_store: SQLStore, now: datetime) -> None:
    """A claim alone takes no advisory lock; counts take one, the delivery's recipient's."""
    delivery = _new(pg_store, now, "email", "alice")
    with pg_store.lock(delivery.id) as locked:
        assert locked.claim(owner="w1", lease_seconds=30, now=now) is not None
        assert 0 == _advisory_locks(pg_store)
    other = _new(pg_store, now, "sms", "alice")
    with pg_store.lock(other.id) as locked:
        # A policy counting for someone else still locks only the delivery's
        # recipient: one lock per transaction, so two never wait on each other.
        locked.recent_attempts("sms", "bob", now - HOUR)
        locked.recipient_attempts("alice", frozenset({"sms"}), now - HOUR)
        assert (1, False, True) == (
            _advisory_locks(pg_store),
            _free(pg_store, "alice"),
            _free(pg_store, "bob"),
        )
    assert (0, True) == (_advisory_locks(pg_store), _free(pg_store, "alice"))


def test_counts_inside_the_lock_on_each_database(store: SQLStore, now: datetime) -> None:
    """Counting under the lock returns the same counts on SQLite (no lock) and PostgreSQL."""
    first = _new(store, now, "email", "alice")
    assert 0 == _count_then_claim(store, first, now)
    second = _new(store, now, "sms", "alice")
    assert 1 == _count_then_claim(store, second, now)


@pytest.mark.postgres
def test_a_namespace_has_its_own_count_locks(postgres_engine: Engine, now: datetime) -> None:
    """A store in a namespace locks its recipients apart from the default schema's."""
    name = f"ns_{secrets.token_hex(4)}"
    store = SQLStore(postgres_engine, namespace=name)
    store.create_all()
    try:
        delivery = _new(store, now, "email", "alice")
        with store.lock(delivery.id) as locked:
            locked.recipient_attempts("alice", None, now - HOUR)
            assert (False, True) == (_free(store, "alice", name), _free(store, "alice"))
    finally:
        with postgres_engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {name} CASCADE"))
