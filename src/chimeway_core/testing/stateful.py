"""A stateful model test of the whole engine, shipped so users can run it too.

:class:`EngineMachine` is a hypothesis ``RuleBasedStateMachine`` driving the
engine through a backend's queue and worker. Its rules create deliveries with
scripted channel results, let the worker run the jobs due, crash a call
inside the backend's own worker, crash a doomed worker mid-call or right
after its claim, rescue, cancel, change a recipient's preferences and let
time pass. After every step the ledger must show only legal transitions,
terminal statuses must be absorbing, attempts must stay within
``max_attempts`` with contiguous numbers and at most one success; after a
final drain (wait out the leases, rescue, run the worker) every delivery
must be terminal. The invariants read the ledger only, and only the rows of
deliveries the machine created, so a store shared with other tests is fine.

Where the jobs run is a :class:`MachineHarness`: a conformance
:class:`~chimeway_core.testing.conformance.Harness` with one more method,
:meth:`~MachineHarness.run_due`. The machine builds the engine (its channels,
policy and retry policy) and hands the harness the factory; the harness makes
its backend, builds the engine with the factory and runs its worker on it.
The engine holds process-local state (the preferences, which calls crash),
so the worker must run in the test's process: in the calling thread (RQ's
burst worker, the memory backend) or in a thread of its own (an embedded
Celery worker).

- :class:`EngineMachine` runs on the memory backend in virtual time, so its
  retries back off for seconds and time jumps up to ten minutes.
- :class:`RealTimeEngineMachine` is for a backend whose worker runs in real
  time (RQ, Celery, yours): retries a fraction of a second apart, leases of
  one second, pauses of at most 1.1 s. Subclass it and override
  :meth:`~EngineMachine.open_harness`, or hand :func:`machine_on` a
  :class:`MachineHarnessFactory` (what ``chimeway selftest
  --machine-harness`` names).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, suppress
from datetime import datetime
from typing import ClassVar, NamedTuple, Protocol
from uuid import UUID

from sqlalchemy import create_engine, select
from sqlalchemy.pool import StaticPool

from chimeway_core.backend import SupportsEnqueue
from chimeway_core.channels.base import DeliveryGuarantee
from chimeway_core.clock import Clock
from chimeway_core.engine import Chimeway
from chimeway_core.errors import IllegalTransitionError, MissingExtraError
from chimeway_core.jobs import Backend
from chimeway_core.outcomes import Outcome
from chimeway_core.policies import PreferencePolicy
from chimeway_core.records import Delivery
from chimeway_core.retry import RetryPolicy
from chimeway_core.schema import AttemptRow, DeliveryRow, JournalRow
from chimeway_core.states import TERMINAL_STATUSES, TRANSITION_TABLE, DeliveryStatus, Event
from chimeway_core.store import SQLStore
from chimeway_core.testing.conformance import EngineFactory, Harness, MemoryHarness
from chimeway_core.testing.fakes import ScriptedChannel, script_for

try:
    from hypothesis import strategies as st
    from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule
except ImportError as error:  # pragma: no cover - the optional extra "testing"
    raise MissingExtraError(
        "testing", feature="chimeway_core.testing.stateful (the stateful machines)"
    ) from error

__all__ = [
    "EngineMachine",
    "MachineHarness",
    "MachineHarnessFactory",
    "RealTimeEngineMachine",
    "SimulatedCrash",
    "machine_on",
]

_TERMINAL = frozenset(status.value for status in TERMINAL_STATUSES)
STEPS = st.sampled_from(["sent", "temporary", "permanent", "bounced", "unknown", "raise", "weird"])
_CHANNELS = st.sampled_from(["a", "b"])
_SCRIPTS = st.lists(STEPS, min_size=1, max_size=5)
_MAX_ATTEMPTS = st.integers(1, 4)


class SimulatedCrash(BaseException):
    """The worker process dies: nothing after this point runs.

    A :class:`BaseException`, not an :class:`Exception`, on purpose: the
    engine classifies any ``Exception`` a channel raises and records it as an
    outcome, while a dying process records nothing. Like
    :class:`KeyboardInterrupt`, this passes the engine's ``except Exception``
    unrecorded and leaves the delivery claimed with its attempt in flight,
    for the rescuer to find; the backend's worker, which survives it, stands
    for the next process.
    """


class MachineHarness(Harness, Protocol):
    """A conformance :class:`~chimeway_core.testing.conformance.Harness` that can also run due jobs.

    :class:`~chimeway_core.testing.conformance.MemoryHarness` is one.
    """

    def run_due(self) -> None:
        """Let the worker run the jobs due now, without waiting for later ones.

        A worker running in a thread of its own may just let a moment pass.
        """
        ...


class MachineHarnessFactory(Protocol):
    """Opens a :class:`MachineHarness` whose engine ``engine_factory`` builds.

    Exactly what :meth:`EngineMachine.open_harness` returns, as a function of
    its own: ``chimeway selftest --machine-harness module:factory`` (or
    ``CHIMEWAY_SELFTEST_MACHINE_HARNESS``) names one, and :func:`machine_on`
    turns one into a machine.
    """

    def __call__(self, engine_factory: EngineFactory) -> AbstractContextManager[MachineHarness]:
        """A context manager yielding the harness for one example, closed at its end."""
        ...


class _Line(NamedTuple):
    """One delivery row, as the invariants read it."""

    id: UUID
    status: str
    reason: str | None
    attempt_count: int
    max_attempts: int
    recipient: str
    lease_expires_at: datetime | None


class _Ledger(NamedTuple):
    deliveries: list[_Line]
    numbers: dict[UUID, list[int]]
    successes: dict[UUID, int]
    journal: list[tuple[str | None, ...]]


class EngineMachine(RuleBasedStateMachine):
    """The engine under arbitrary interleavings of jobs, crashes and operator actions.

    On the memory backend in virtual time; see the module docstring for how
    to run it on another backend (override :meth:`open_harness` and the
    timing attributes, or subclass :class:`RealTimeEngineMachine`).
    """

    deliveries = Bundle("deliveries")

    #: The engine's retry policy (each delivery draws its own ``max_attempts``, 1 to 4).
    retry: ClassVar[RetryPolicy] = RetryPolicy(
        max_attempts=4, initial_delay=5, backoff_factor=2, jitter=0
    )
    #: The scripted channels' timeout (s); a lease lasts it plus ``lease_margin``.
    channel_timeout: ClassVar[float] = 1.0
    #: The engine's lease margin (s).
    lease_margin: ClassVar[float] = 9.0
    #: What the ``advance`` rule may let pass, in seconds of the harness's time.
    pauses: ClassVar[tuple[float, ...]] = (0.5, 5, 11, 60, 600)
    #: How long each drain at teardown may run the worker (s of the harness's time).
    drain_timeout: ClassVar[float] = 60.0
    #: At most this many rounds of (wait out the leases, rescue, drain) at teardown.
    drain_rounds: ClassVar[int] = 8
    #: What a crashing call inside the backend's own worker raises. It must end
    #: the job without recording an outcome: a :class:`BaseException` the
    #: worker survives (the memory backend, RQ), or one of the backend's
    #: ``interrupts`` (Celery's soft time limit).
    worker_crash: ClassVar[type[BaseException]] = SimulatedCrash

    def __init__(self) -> None:
        super().__init__()
        self.opted_out: set[str] = set()
        self.crash_next: set[str] = set()  # recipients whose next call dies
        self._crash_lock = threading.Lock()
        self.created: list[UUID] = []
        self.last_terminal: dict[UUID, tuple[str, str | None]] = {}
        self.count = 0
        self._stack = ExitStack()
        self.harness = self._stack.enter_context(self.open_harness(self.build_engine))
        self.engine = self.harness.engine
        self.store = self.engine.store
        # Another worker of the same application whose every channel call dies.
        self.doomed = self._engine(self.store, self.engine.backend, self.engine.clock, _die)

    def open_harness(self, engine_factory: EngineFactory) -> AbstractContextManager[MachineHarness]:
        """The harness for one example; closed at its end.

        It must build its engine with ``engine_factory`` and run its worker
        with that engine, in this process. The default: the memory backend
        on a virtual clock, with the ledger in an in-memory SQLite database.
        """
        return _memory_harness(engine_factory)

    def build_engine(
        self, store: SQLStore, backend: Backend, *, clock: Clock | None = None
    ) -> Chimeway:
        """The machine's engine (an :class:`EngineFactory`): channels ``a`` and ``b``.

        Both are :class:`ScriptedChannel` (``b`` at most once) whose call
        raises :attr:`worker_crash` for a delivery a ``crash_in_the_worker``
        step marked; a :class:`PreferencePolicy` suppresses recipients who
        opted out.
        """
        return self._engine(store, backend, clock, self._maybe_crash)

    def _engine(
        self,
        store: SQLStore,
        backend: Backend | SupportsEnqueue,
        clock: Clock | None,
        on_call: Callable[[Delivery], None],
    ) -> Chimeway:
        channels = {
            "a": ScriptedChannel(clock=clock, timeout=self.channel_timeout, on_call=on_call),
            "b": ScriptedChannel(
                clock=clock,
                timeout=self.channel_timeout,
                guarantee=DeliveryGuarantee.AT_MOST_ONCE,
                on_call=on_call,
            ),
        }
        return Chimeway(
            store,
            backend,
            channels,
            policies=[PreferencePolicy(lambda d: d.recipient not in self.opted_out)],
            retry=self.retry,
            clock=clock,
            lease_margin=self.lease_margin,
            requeue_after=10**9,  # the drain must not lean on the stranded-job sweep
        )

    def _maybe_crash(self, delivery: Delivery) -> None:
        with self._crash_lock:
            if delivery.recipient not in self.crash_next:
                return
            self.crash_next.discard(delivery.recipient)
        raise self.worker_crash

    @property
    def lease_seconds(self) -> float:
        """How long a claim's lease lasts."""
        return self.channel_timeout + self.lease_margin

    def teardown(self) -> None:
        """Drain and check, then close the harness."""
        try:
            self._drain_and_check()
        finally:
            self._stack.close()

    # ------------------------------------------------------------------ rules

    @initialize(target=deliveries, channel=_CHANNELS, steps=_SCRIPTS, max_attempts=_MAX_ATTEMPTS)
    def first_notify(self, channel: str, steps: list[str], max_attempts: int) -> UUID:
        """Every example starts with a delivery, so every rule has one to act on."""
        return self._notify(channel, steps, max_attempts, crash_first_call=False)

    @rule(
        target=deliveries,
        channel=_CHANNELS,
        steps=_SCRIPTS,
        max_attempts=_MAX_ATTEMPTS,
        crash_first_call=st.booleans(),
    )
    def notify(
        self, channel: str, steps: list[str], max_attempts: int, crash_first_call: bool
    ) -> UUID:
        """A new delivery whose channel plays ``steps``; maybe the worker dies in its first call.

        The crash is armed before the delivery exists, so a worker that runs
        jobs on its own cannot take the job first.
        """
        return self._notify(channel, steps, max_attempts, crash_first_call=crash_first_call)

    @rule()
    def run_due_jobs(self) -> None:
        """The backend's worker runs what is due."""
        self._run_due()

    @rule(delivery=deliveries)
    def crash_in_the_worker(self, delivery: UUID) -> None:
        """The backend's worker dies in the delivery's next call (now, or whenever it comes)."""
        recipient = self.store.get(delivery).recipient  # type: ignore[union-attr]
        with self._crash_lock:
            self.crash_next.add(recipient)
        self._run_due()

    @rule(delivery=deliveries)
    def crash_during_the_call(self, delivery: UUID) -> None:
        """Another worker takes the delivery's job and dies mid-call."""
        with self._crashes():
            self.doomed.perform(delivery)

    @rule(delivery=deliveries)
    def crash_right_after_the_claim(self, delivery: UUID) -> None:
        """Another worker claims the delivery and dies before calling."""
        self.store.claim(
            delivery, owner="doomed", lease_seconds=self.lease_seconds, now=self.engine.clock.now()
        )

    @rule(data=st.data())
    def advance(self, data: st.DataObject) -> None:
        """Time passes."""
        self.harness.sleep(data.draw(st.sampled_from(self.pauses), label="seconds"))

    @rule()
    def rescue(self) -> None:
        """The rescuer runs."""
        self.engine.rescue()

    @rule(delivery=deliveries)
    def cancel(self, delivery: UUID) -> None:
        """The application cancels; a terminal delivery refuses."""
        try:
            self.engine.cancel(delivery)
        except IllegalTransitionError:
            assert self.store.get(delivery).is_terminal  # type: ignore[union-attr]

    @rule(delivery=deliveries, opt_out=st.booleans())
    def change_preferences(self, delivery: UUID, opt_out: bool) -> None:
        """The recipient opts out, or back in."""
        recipient = self.store.get(delivery).recipient  # type: ignore[union-attr]
        (self.opted_out.add if opt_out else self.opted_out.discard)(recipient)

    # ------------------------------------------------------------ invariants

    @invariant()
    def ledger_is_consistent(self) -> None:
        """Legal transitions, absorbing terminals, attempts within bounds, one success."""
        self._check()

    def _notify(
        self, channel: str, steps: list[str], max_attempts: int, *, crash_first_call: bool
    ) -> UUID:
        self.count += 1
        recipient = script_for(*steps, tag=str(self.count))
        if crash_first_call:
            with self._crash_lock:
                self.crash_next.add(recipient)
        delivery_id = self.engine.notify(channel, recipient, max_attempts=max_attempts).id
        self.created.append(delivery_id)
        return delivery_id

    def _run_due(self) -> None:
        with self._crashes():
            self.harness.run_due()

    @contextmanager
    def _crashes(self) -> Iterator[None]:
        with suppress(SimulatedCrash, self.worker_crash):
            yield

    def _drain_and_check(self) -> None:
        with self._crash_lock:
            self.crash_next.clear()
        for _ in range(self.drain_rounds):
            self._wait_out_leases()
            self.engine.rescue()
            live = [row for row in self._ledger().deliveries if row.status not in _TERMINAL]
            self.harness.drain([row.id for row in live], timeout=self.drain_timeout)
            live = [row for row in self._ledger().deliveries if row.status not in _TERMINAL]
            if not any(row.lease_expires_at is not None for row in live):
                break  # nothing left for a rescue to resolve: another round changes nothing
        deliveries = self._check()
        live_shapes = sorted(
            (row.status, row.attempt_count, row.max_attempts, row.recipient)
            for row in deliveries
            if row.status not in _TERMINAL
        )
        assert [] == live_shapes, "deliveries still live after draining"

    def _wait_out_leases(self) -> None:
        leases = [
            row.lease_expires_at
            for row in self._ledger().deliveries
            if row.status not in _TERMINAL and row.lease_expires_at is not None
        ]
        if leases:
            wait = (max(leases) - self.engine.clock.now()).total_seconds()
            if wait >= 0:
                self.harness.sleep(wait + 0.05)

    def _ledger(self) -> _Ledger:
        """This machine's part of the ledger, in three light queries."""
        if not self.created:
            return _Ledger([], {}, {}, [])
        d, a, j = DeliveryRow, AttemptRow, JournalRow
        ids: Sequence[UUID] = self.created
        # Deliveries first: an attempt or journal entry read later is never older.
        with self.store.engine.connect() as conn:
            deliveries = [
                _Line(*row)
                for row in conn.execute(
                    select(
                        d.id,
                        d.status,
                        d.reason,
                        d.attempt_count,
                        d.max_attempts,
                        d.recipient,
                        d.lease_expires_at,
                    ).where(d.id.in_(ids))
                )
            ]
            numbers: dict[UUID, list[int]] = {}
            successes: dict[UUID, int] = {}
            for delivery_id, number, outcome in conn.execute(
                select(a.delivery_id, a.number, a.outcome)
                .where(a.delivery_id.in_(ids))
                .order_by(a.delivery_id, a.number)
            ):
                numbers.setdefault(delivery_id, []).append(number)
                if outcome == Outcome.SUCCEEDED.value:
                    successes[delivery_id] = successes.get(delivery_id, 0) + 1
            journal = [
                tuple(row)
                for row in conn.execute(
                    select(j.event, j.from_status, j.to_status).where(j.delivery_id.in_(ids))
                )
            ]
            conn.commit()
        return _Ledger(deliveries, numbers, successes, journal)

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


class RealTimeEngineMachine(EngineMachine):
    """:class:`EngineMachine` timed for a backend whose worker runs in real time.

    Retries 0.05 s apart, doubling; leases of one second; pauses of 0.05,
    0.3 and 1.1 s (the last outlasts a lease). Override
    :meth:`~EngineMachine.open_harness` to return your backend's
    :class:`MachineHarness`.
    """

    retry = RetryPolicy(max_attempts=4, initial_delay=0.05, backoff_factor=2, jitter=0)
    channel_timeout = 0.5
    lease_margin = 0.5
    pauses = (0.05, 0.3, 1.1)
    drain_timeout = 30.0
    drain_rounds = 3

    def open_harness(self, engine_factory: EngineFactory) -> AbstractContextManager[MachineHarness]:
        """Not provided (:class:`NotImplementedError`): a subclass returns its backend's harness."""
        raise NotImplementedError(
            f"{type(self).__qualname__} must override open_harness to return a MachineHarness"
        )


def machine_on(
    factory: MachineHarnessFactory, *, worker_crash: type[BaseException] | None = None
) -> type[RealTimeEngineMachine]:
    """A :class:`RealTimeEngineMachine` whose :meth:`~EngineMachine.open_harness` calls ``factory``.

    The same as subclassing and overriding ``open_harness`` by hand; run the
    result with ``run_state_machine_as_test``. ``worker_crash`` is the
    machine's :attr:`~EngineMachine.worker_crash` (``None``: the default).
    A ``factory`` that is not callable is a :class:`TypeError`.
    """
    if not callable(factory):
        raise TypeError(f"factory must be callable, not {type(factory).__name__}")
    crash = RealTimeEngineMachine.worker_crash if worker_crash is None else worker_crash

    class ConfiguredEngineMachine(RealTimeEngineMachine):
        """The real-time machine on the harness ``factory`` opens."""

        worker_crash = crash

        def open_harness(
            self, engine_factory: EngineFactory
        ) -> AbstractContextManager[MachineHarness]:
            """The harness ``factory`` opens with the machine's engine factory."""
            return factory(engine_factory)

    return ConfiguredEngineMachine


def _die(delivery: Delivery) -> None:  # noqa: ARG001 - the on_call hook's shape
    raise SimulatedCrash


@contextmanager
def _memory_harness(engine_factory: EngineFactory) -> Iterator[MachineHarness]:
    store = SQLStore(create_engine("sqlite://", poolclass=StaticPool))
    store.create_all()
    try:
        yield MemoryHarness(store, engine_factory=engine_factory)
    finally:
        store.engine.dispose()
