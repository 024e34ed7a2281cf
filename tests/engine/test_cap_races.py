"""Rate limits under racing workers: a cap holds exactly however many perform at once."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from uuid import UUID

import pytest
from sqlalchemy import event

from chimeway_backends.memory import MemoryBackend
from chimeway_core import (
    DeliveryStatus,
    ExpiryPolicy,
    RateLimitAction,
    RateLimitPolicy,
    RecipientRateLimitPolicy,
    VirtualClock,
)
from chimeway_core.engine import Chimeway
from chimeway_core.policies import Policy
from chimeway_core.store import SQLStore
from chimeway_core.testing import FakeChannel
from tests.engine.conftest import START

HOUR = timedelta(hours=1)
CHANNELS = ("email", "sms")
PER_CHANNEL = 6
ROUNDS = 12


def _race_round(store: SQLStore, policy: Policy, recipient: str) -> Counter[object]:
    """Perform six deliveries per channel to ``recipient`` at once, one engine per worker.

    Returns how many channel calls were made and how the deliveries ended,
    by ``(status, reason)``.
    """
    clock = VirtualClock(START)
    channels = {name: FakeChannel(clock=clock) for name in CHANNELS}
    workers = [
        Chimeway(store, MemoryBackend(clock), channels, policies=(policy,), clock=clock)
        for _ in range(PER_CHANNEL * len(CHANNELS))
    ]
    ids = [
        workers[0].notify(channel, recipient, idempotency_key=f"{recipient}-{channel}-{n}").id
        for channel in CHANNELS
        for n in range(PER_CHANNEL)
    ]
    gate = threading.Barrier(len(ids))

    def perform(index: int) -> None:
        gate.wait()
        workers[index].perform(ids[index])

    with ThreadPoolExecutor(max_workers=len(ids)) as pool:
        list(pool.map(perform, range(len(ids))))
    ended: Counter[object] = Counter()
    for delivery_id in ids:
        after = workers[0].get(delivery_id).delivery
        ended[after.status, after.reason] += 1
    ended["calls"] = sum(len(channel.calls) for channel in channels.values())
    return ended


@pytest.mark.parametrize(
    ("policy", "sent", "over"),
    [
        (RateLimitPolicy(3, HOUR), 3 * len(CHANNELS), (DeliveryStatus.READY, "rate_limited")),
        (
            RecipientRateLimitPolicy(3, HOUR),
            3,
            (DeliveryStatus.READY, "recipient_rate_limited"),
        ),
        (
            RecipientRateLimitPolicy(3, HOUR, action=RateLimitAction.SUPPRESS),
            3,
            (DeliveryStatus.SUPPRESSED, "recipient_rate_limited"),
        ),
    ],
    ids=["per-channel", "recipient-defer", "recipient-suppress"],
)
def test_racing_workers_send_exactly_the_cap(
    store: SQLStore, policy: Policy, sent: int, over: tuple[DeliveryStatus, str]
) -> None:
    """Twelve workers perform twelve deliveries to one recipient at once: the cap, no more.

    Over two channels, a barrier releasing every worker together, round after
    round: exactly the cap is sent, every other delivery deferred (or
    suppressed). Each worker locks only its own delivery's row; the count lock
    makes their counts take turns.
    """
    total = PER_CHANNEL * len(CHANNELS)
    expected = Counter({"calls": sent, (DeliveryStatus.SUCCEEDED, None): sent, over: total - sent})
    # SQLite's write lock serializes the workers: a couple of rounds show it.
    rounds = ROUNDS if store.engine.dialect.name == "postgresql" else 2
    for round_ in range(rounds):
        assert expected == _race_round(store, policy, f"alice-{round_}"), f"round {round_}"


@contextmanager
def _advisory_locks_taken(store: SQLStore) -> Iterator[list[str]]:
    """Collect, for the block, every statement that takes an advisory lock on ``store``."""
    seen: list[str] = []

    def collect(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if "pg_advisory" in statement:
            seen.append(statement)

    event.listen(store.engine, "before_cursor_execute", collect)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", collect)


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("policies", "channel", "locks"),
    [
        ((), "push", 0),
        ((ExpiryPolicy(name="expiry_again"),), "push", 0),
        ((RecipientRateLimitPolicy(3, HOUR, channels={"sms"}),), "push", 0),
        ((RecipientRateLimitPolicy(3, HOUR, channels={"sms"}),), "sms", 1),
        ((RateLimitPolicy(3, HOUR), RecipientRateLimitPolicy(3, HOUR)), "push", 1),
    ],
    ids=["quick-claim", "no-count", "off-the-cap", "on-the-cap", "two-caps-one-lock"],
)
def test_only_a_counted_delivery_takes_the_count_lock(
    pg_store: SQLStore, policies: tuple[Policy, ...], channel: str, locks: int
) -> None:
    """Deliveries no rate limit counts for take no lock (nor a round trip); others take one."""
    clock = VirtualClock(START)
    channels = {name: FakeChannel(clock=clock) for name in ("sms", "push")}
    engine = Chimeway(pg_store, MemoryBackend(clock), channels, policies=policies, clock=clock)
    delivery_id: UUID = engine.notify(channel, "alice").id
    with _advisory_locks_taken(pg_store) as seen:
        engine.perform(delivery_id)
    assert (locks, DeliveryStatus.SUCCEEDED) == (len(seen), engine.get(delivery_id).delivery.status)
