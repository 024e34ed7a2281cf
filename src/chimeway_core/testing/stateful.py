"""A stateful model test of the whole engine, shipped so users can run it too.

:class:`EngineMachine` is a hypothesis ``RuleBasedStateMachine`` driving the
engine on the memory backend.

Rules create deliveries with scripted channel results, run due jobs, crash a
worker mid-call or right after its claim, rescue, cancel, change a
recipient's preferences and move the virtual clock. After every step the
ledger must show only legal transitions, terminal statuses must be absorbing,
attempts must stay within ``max_attempts`` with contiguous numbers and at most
one success; after a final drain every delivery must be terminal.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import NamedTuple
from uuid import UUID

from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule
from sqlalchemy import create_engine, select
from sqlalchemy.pool import StaticPool

from chimeway_backends.memory import MemoryBackend
from chimeway_core.channels.base import DeliveryGuarantee
from chimeway_core.clock import VirtualClock
from chimeway_core.engine import Chimeway
from chimeway_core.errors import IllegalTransitionError, UnhandledOutcomeError
from chimeway_core.outcomes import Outcome
from chimeway_core.policies import PreferencePolicy
from chimeway_core.records import Delivery
from chimeway_core.retry import RetryPolicy
from chimeway_core.schema import AttemptRow, DeliveryRow, JournalRow
from chimeway_core.states import TERMINAL_STATUSES, TRANSITION_TABLE, DeliveryStatus, Event
from chimeway_core.store import SQLStore
from chimeway_core.testing.fakes import ScriptedChannel, script_for

__all__ = ["EngineMachine", "SimulatedCrash"]

_TERMINAL = frozenset(status.value for status in TERMINAL_STATUSES)
STEPS = st.sampled_from(["sent", "temporary", "permanent", "bounced", "unknown", "raise", "weird"])


class _Line(NamedTuple):
    """One delivery row, as the invariants read it."""

    id: UUID
    status: str
    reason: str | None
    attempt_count: int
    max_attempts: int
    recipient: str


class SimulatedCrash(BaseException):
    """The worker process dies: nothing after this point runs."""


class EngineMachine(RuleBasedStateMachine):
    """The engine under arbitrary interleavings of jobs, crashes and operator actions."""

    deliveries = Bundle("deliveries")

    def __init__(self) -> None:
        super().__init__()
        self.clock = VirtualClock()
        db = create_engine("sqlite://", poolclass=StaticPool)
        self.store = SQLStore(db)
        self.store.create_all()
        self.backend = MemoryBackend(self.clock)
        self.crash_next: set[UUID] = set()
        self.opted_out: set[str] = set()

        def maybe_crash(delivery: Delivery) -> None:
            if delivery.id in self.crash_next:
                self.crash_next.discard(delivery.id)
                raise SimulatedCrash

        channels = {
            "a": ScriptedChannel(clock=self.clock, timeout=1.0, on_call=maybe_crash),
            "b": ScriptedChannel(
                clock=self.clock,
                timeout=1.0,
                guarantee=DeliveryGuarantee.AT_MOST_ONCE,
                on_call=maybe_crash,
            ),
        }
        self.engine = Chimeway(
            self.store,
            self.backend,
            channels,
            policies=[PreferencePolicy(lambda d: d.recipient not in self.opted_out)],
            retry=RetryPolicy(max_attempts=4, initial_delay=5, backoff_factor=2, jitter=0),
            clock=self.clock,
            lease_margin=9.0,
            requeue_after=10**9,  # the drain must not lean on the stranded-job sweep
        )
        self.last_terminal: dict[UUID, tuple[str, str | None]] = {}
        self.count = 0

    def teardown(self) -> None:
        try:
            self._drain_and_check()
        finally:
            self.store.engine.dispose()

    @rule(
        target=deliveries,
        channel=st.sampled_from(["a", "b"]),
        steps=st.lists(STEPS, min_size=1, max_size=5),
        max_attempts=st.integers(1, 4),
    )
    def notify(self, channel: str, steps: list[str], max_attempts: int) -> UUID:
        self.count += 1
        recipient = script_for(*steps, tag=str(self.count))
        return self.engine.notify(channel, recipient, max_attempts=max_attempts).id

    @rule()
    def run_due_jobs(self) -> None:
        self._run_due()

    @rule(delivery=deliveries)
    def crash_during_the_call(self, delivery: UUID) -> None:
        self.crash_next.add(delivery)
        with _crashes():
            self.engine.perform(delivery)
        self.crash_next.discard(delivery)

    @rule(delivery=deliveries)
    def crash_right_after_the_claim(self, delivery: UUID) -> None:
        self.store.claim(delivery, owner="doomed", lease_seconds=10, now=self.clock.now())

    @rule(seconds=st.sampled_from([0.5, 5, 11, 60, 600]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def rescue(self) -> None:
        self.engine.rescue()

    @rule(delivery=deliveries)
    def cancel(self, delivery: UUID) -> None:
        try:
            self.engine.cancel(delivery)
        except IllegalTransitionError:
            assert self.store.get(delivery).is_terminal  # type: ignore[union-attr]

    @rule(delivery=deliveries, opt_out=st.booleans())
    def change_preferences(self, delivery: UUID, opt_out: bool) -> None:
        recipient = self.store.get(delivery).recipient  # type: ignore[union-attr]
        (self.opted_out.add if opt_out else self.opted_out.discard)(recipient)

    def _run_due(self) -> None:
        with _crashes():
            self.backend.run_due(self.engine, max_jobs=10_000)

    def _drain_and_check(self) -> None:
        self.crash_next.clear()
        for _ in range(8):
            self.clock.advance(60)
            self.engine.rescue()
            self.backend.run_until_idle(self.engine, max_jobs=10_000)
            if all(row.status in _TERMINAL for row in self._ledger()[0]):
                break
        deliveries = self._check()
        live = sorted(
            (row.status, row.attempt_count, row.max_attempts, row.recipient)
            for row in deliveries
            if row.status not in _TERMINAL
        )
        assert [] == live, "deliveries still live after draining"

    def _ledger(
        self,
    ) -> tuple[list[_Line], dict[UUID, list[int]], dict[UUID, int], list[tuple[str | None, ...]]]:
        """The whole ledger in three light queries."""
        d, a, j = DeliveryRow, AttemptRow, JournalRow
        with self.store.engine.connect() as conn:
            deliveries = [
                _Line(*row)
                for row in conn.execute(
                    select(d.id, d.status, d.reason, d.attempt_count, d.max_attempts, d.recipient)
                )
            ]
            numbers: dict[UUID, list[int]] = {}
            successes: dict[UUID, int] = {}
            for delivery_id, number, outcome in conn.execute(
                select(a.delivery_id, a.number, a.outcome).order_by(a.delivery_id, a.number)
            ):
                numbers.setdefault(delivery_id, []).append(number)
                if outcome == Outcome.SUCCEEDED.value:
                    successes[delivery_id] = successes.get(delivery_id, 0) + 1
            journal = [
                tuple(row) for row in conn.execute(select(j.event, j.from_status, j.to_status))
            ]
            conn.commit()
        return deliveries, numbers, successes, journal

    def _check(self) -> list[_Line]:
        deliveries, numbers, successes, journal = self._ledger()
        for row in deliveries:
            attempts = numbers.get(row.id, [])
            assert list(range(1, len(attempts) + 1)) == attempts, "attempt numbers not contiguous"
            assert len(attempts) <= row.max_attempts, "more attempts than max_attempts"
            assert successes.get(row.id, 0) <= 1, "more than one succeeded attempt"
            if row.status == DeliveryStatus.SUCCEEDED.value:
                assert successes.get(row.id), "succeeded without a succeeded attempt"
            if row.id in self.last_terminal:
                assert self.last_terminal[row.id] == (row.status, row.reason), (
                    "a terminal delivery changed"
                )
            elif row.status in _TERMINAL:
                self.last_terminal[row.id] = (row.status, row.reason)
        for event, from_status, to_status in journal:
            if event is None or from_status is None:
                continue
            move = TRANSITION_TABLE.get((DeliveryStatus(from_status), Event(event)))
            assert move is not None, (
                f"illegal transition in the journal: {event} from {from_status}"
            )
            assert move.dest.value == to_status
        return deliveries

    @invariant()
    def ledger_is_consistent(self) -> None:
        self._check()


@contextmanager
def _crashes() -> Iterator[None]:
    with suppress(SimulatedCrash, UnhandledOutcomeError):
        yield
