"""The demo: N deliveries through a simulated provider, in virtual time.

Theory of operation
-------------------
:func:`run_demo` builds a real :class:`~chimeway_core.engine.Chimeway` on the
store it is given and the in-memory backend, with a
:class:`~chimeway_core.clock.VirtualClock`, and sends ``deliveries``
notifications through :class:`SimulatedProvider`, a real channel. Backoff
delays, ``retry_after`` hints and slow responses all pass in virtual time, so a
thousand deliveries with hours of retries finish in seconds of wall time.

Everything the demo prints is deterministic for a seed:

- each delivery gets a :class:`Profile` drawn from the :class:`Mix` with a
  hash of ``(seed, idempotency key)``, and the provider's answer to attempt
  *n* is a hash of ``(seed, idempotency key, n)`` — never wall time, never
  ``uuid4`` (delivery ids are random, so nothing printed depends on them);
- the engine's retry jitter comes from ``random.Random(seed)``;
- the memory backend runs jobs in one thread, in run-time order then
  first-in-first-out, so the jitter is drawn in the same order every run.

Only the wall-clock duration (:attr:`DemoReport.wall_seconds`) differs
between two runs with the same seed.
"""

from __future__ import annotations

import enum
import hashlib
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Final, assert_never

import attrs
from sqlalchemy import func, select

from chimeway_core.channels.base import DeliveryGuarantee
from chimeway_core.clock import VirtualClock
from chimeway_core.engine import Chimeway
from chimeway_core.errors import OutcomeUnknownError
from chimeway_core.memory import MemoryBackend
from chimeway_core.outcomes import (
    Bounced,
    ChannelResult,
    ErrorClass,
    PermanentFailure,
    Sent,
    TemporaryFailure,
)
from chimeway_core.policies import PreferencePolicy
from chimeway_core.records import Delivery, NewDelivery
from chimeway_core.retry import RetryPolicy
from chimeway_core.schema import DeliveryRow
from chimeway_core.states import TERMINAL_STATUSES, DeliveryStatus
from chimeway_core.store import SQLStore
from chimeway_core.telemetry import MetaValue, Telemetry, TelemetryEvent

__all__ = [
    "CHANNEL",
    "DEFAULT_MIX",
    "DEMO_RETRY",
    "DemoReport",
    "Mix",
    "Profile",
    "RowCount",
    "SimulatedProvider",
    "StatusCount",
    "run_demo",
]

#: The name the simulated provider is registered under.
CHANNEL: Final = "sim"

#: Five attempts, 30 s doubling to at most an hour, 10 % jitter.
DEMO_RETRY: Final = RetryPolicy(
    max_attempts=5, initial_delay=30.0, backoff_factor=2.0, max_delay=3600.0, jitter=0.1
)

_PROVIDER_TIMEOUT: Final = 30.0
_RETRY_AFTER_HINTS: Final = (60.0, 120.0, 300.0)


class Profile(enum.StrEnum):
    """How the simulated provider treats one delivery, for its whole life."""

    SUCCESS = "success"
    """Accepted on the first attempt."""
    TEMPORARY = "temporary"
    """Fails temporarily 1 to 5 times (some with ``retry_after``), then is accepted."""
    PERMANENT = "permanent"
    """Refused for good on the first attempt."""
    BOUNCE = "bounce"
    """The address does not exist: bounced on the first attempt."""
    SLOW = "slow"
    """Answers after 5 to 60 virtual seconds; past the 30 s timeout the outcome is unknown."""
    OPTED_OUT = "opted_out"
    """The recipient opted out: a preference policy suppresses it, the provider is never called."""


def _weight(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}={text} must be a finite number >= 0")
    return value


@attrs.frozen
class Mix:
    """Relative weights of the :class:`Profile` values; they need not sum to 1."""

    weights: Mapping[Profile, float]

    def __attrs_post_init__(self) -> None:
        if set(self.weights) != set(Profile):
            raise ValueError("a mix has one weight per profile")
        total = sum(self.weights.values())
        if not total > 0:
            raise ValueError("a mix needs at least one positive weight")
        if not math.isfinite(total):
            # Each weight is finite but their sum overflowed: every share would be 0.
            raise ValueError("the mix's weights must add up to a finite number; use smaller ones")

    @classmethod
    def parse(cls, text: str) -> Mix:
        """Parse ``"success=70,temporary=10,..."``; profiles not named get weight 0.

        Raises :class:`ValueError` with a one-line message for an unknown
        profile, a repeated one, a malformed pair, a negative weight, or
        weights whose sum is not a finite number > 0.
        """
        weights = dict.fromkeys(Profile, 0.0)
        seen: set[Profile] = set()
        for part in text.split(","):
            item = part.strip()
            if not item:
                continue
            name, sep, value = item.partition("=")
            name = name.strip()
            if not sep:
                raise ValueError(f"{item!r} is not name=weight")
            try:
                profile = Profile(name)
            except ValueError:
                known = ", ".join(p.value for p in Profile)
                raise ValueError(f"unknown profile {name!r} (known: {known})") from None
            if profile in seen:
                raise ValueError(f"profile {name!r} is given twice")
            seen.add(profile)
            weights[profile] = _weight(value.strip(), name)
        if not seen:
            raise ValueError("the mix is empty")
        return cls(weights)

    def pick(self, u: float) -> Profile:
        """The profile at ``u`` in ``[0, 1)`` along the cumulative weights."""
        total = sum(self.weights.values())
        point = u * total
        running = 0.0
        chosen = Profile.SUCCESS
        for profile in Profile:
            weight = self.weights[profile]
            if weight <= 0:
                continue
            chosen = profile
            running += weight
            if point < running:
                return profile
        return chosen

    def __str__(self) -> str:
        total = sum(self.weights.values())
        return " ".join(f"{p.value}={self.weights[p] / total:.2f}" for p in Profile)


#: The mix ``chimeway demo`` uses unless ``--mix`` says otherwise.
DEFAULT_MIX: Final = Mix(
    {
        Profile.SUCCESS: 0.55,
        Profile.TEMPORARY: 0.15,
        Profile.PERMANENT: 0.05,
        Profile.BOUNCE: 0.05,
        Profile.SLOW: 0.10,
        Profile.OPTED_OUT: 0.10,
    }
)


def _unit(seed: int, *parts: object) -> float:
    """A number in ``[0, 1)`` that depends only on ``seed`` and ``parts``."""
    text = "\x1f".join([str(seed), *(str(part) for part in parts)])
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class SimulatedProvider:
    """A provider channel whose answers are a pure function of seed, key and attempt.

    At-least-once (it honours idempotency keys), so an unknown outcome is
    retried with the same key. ``clock`` is advanced by each call's simulated
    latency; a slow answer past ``timeout`` raises
    :class:`~chimeway_core.errors.OutcomeUnknownError` after ``timeout``
    virtual seconds. Meant for one thread, as :func:`run_demo` drives it.
    """

    guarantee = DeliveryGuarantee.AT_LEAST_ONCE
    exception_class = ErrorClass.TEMPORARY

    def __init__(
        self, *, seed: int, mix: Mix, clock: VirtualClock, timeout: float = _PROVIDER_TIMEOUT
    ) -> None:
        self.seed = seed
        self.mix = mix
        self.clock = clock
        self.timeout = timeout
        self._lock = threading.Lock()
        self.calls = 0
        self.slow_answers = 0
        self.timeouts = 0
        self.latency = 0.0

    def profile_of(self, idempotency_key: str) -> Profile:
        """The profile of the delivery with this idempotency key."""
        return self.mix.pick(_unit(self.seed, idempotency_key, "profile"))

    def allows(self, delivery: Delivery) -> bool:
        """Whether the recipient accepts notifications (the preference policy's question)."""
        return self.profile_of(delivery.idempotency_key) is not Profile.OPTED_OUT

    def send(self, delivery: Delivery, idempotency_key: str) -> ChannelResult:
        """Answer attempt ``delivery.attempt_count`` as the delivery's profile says."""
        attempt = delivery.attempt_count
        profile = self.profile_of(idempotency_key)

        def draw(name: str) -> float:
            return _unit(self.seed, idempotency_key, attempt, name)

        with self._lock:
            self.calls += 1
        match profile:
            case Profile.SUCCESS | Profile.OPTED_OUT:
                self._wait(0.05 + 0.45 * draw("latency"))
                return Sent(provider_response={"status": 202})
            case Profile.TEMPORARY:
                self._wait(0.05 + 0.45 * draw("latency"))
                failures = 1 + int(_unit(self.seed, idempotency_key, "failures") * 5)
                if attempt > failures:
                    return Sent(provider_response={"status": 202})
                hint = None
                if draw("hinted") < 0.3:
                    hint = _RETRY_AFTER_HINTS[int(draw("hint") * len(_RETRY_AFTER_HINTS))]
                return TemporaryFailure(
                    "provider busy (simulated 503)", hint, provider_response={"status": 503}
                )
            case Profile.PERMANENT:
                self._wait(0.05 + 0.45 * draw("latency"))
                return PermanentFailure(
                    "rejected (simulated 400)", provider_response={"status": 400}
                )
            case Profile.BOUNCE:
                self._wait(0.05 + 0.45 * draw("latency"))
                return Bounced(
                    "mailbox does not exist (simulated 550)", provider_response={"status": 550}
                )
            case Profile.SLOW:
                latency = 5.0 + 55.0 * draw("latency")
                with self._lock:
                    self.slow_answers += 1
                if latency > self.timeout:
                    self._wait(self.timeout)
                    with self._lock:
                        self.timeouts += 1
                    raise OutcomeUnknownError(
                        f"no answer within {self.timeout:g} s (simulated timeout)"
                    )
                self._wait(latency)
                return Sent(provider_response={"status": 202})
            case _:
                assert_never(profile)

    def _wait(self, seconds: float) -> None:
        # Simulated latency: virtual time passes, the wall clock does not.
        self.clock.advance(seconds)
        with self._lock:
            self.latency += seconds


@attrs.frozen
class StatusCount:
    """How many deliveries ended with one status and reason."""

    status: DeliveryStatus
    reason: str | None
    count: int


@attrs.frozen
class RowCount:
    """How many times one dispatch row (or policy decision) fired, and its action."""

    row: str
    action: str
    count: int


@attrs.frozen(kw_only=True)
class DemoReport:
    """What a demo run did. Everything but ``wall_seconds`` is deterministic per seed."""

    deliveries: int
    seed: int
    mix: Mix
    statuses: tuple[StatusCount, ...]
    """Final status and reason counts, in status order."""
    attempts: tuple[tuple[int, int], ...]
    """``(attempts made, deliveries)`` for every count from 0 to the maximum."""
    rows: tuple[RowCount, ...]
    """Dispatch rows and policy decisions that fired, most frequent first."""
    provider_calls: int
    slow_answers: int
    timeouts: int
    job_failures: int
    """Jobs whose ``perform`` raised (an unhandled outcome); 0 in a healthy run."""
    virtual_seconds: float
    """Virtual time from the first notify to the last job."""
    wall_seconds: float

    @property
    def non_terminal(self) -> int:
        """Deliveries not in a terminal status at the end (0 in a healthy run)."""
        return sum(s.count for s in self.statuses if s.status not in TERMINAL_STATUSES)

    @property
    def all_terminal(self) -> bool:
        """Whether every delivery ended in a terminal status."""
        return self.non_terminal == 0 and sum(s.count for s in self.statuses) == self.deliveries

    @property
    def throughput(self) -> float:
        """Deliveries per second of wall time."""
        return self.deliveries / self.wall_seconds if self.wall_seconds > 0 else math.inf


class _Tally:
    """A telemetry subscriber: counts rows fired and deliveries that ended."""

    def __init__(self, on_terminal: Callable[[int], None] | None) -> None:
        self.rows: Counter[tuple[str, str]] = Counter()
        self.terminal = 0
        self._on_terminal = on_terminal

    def __call__(self, event: TelemetryEvent, meta: Mapping[str, MetaValue]) -> None:
        ended = False
        if event is TelemetryEvent.ATTEMPT_RECORDED:
            self.rows[str(meta.get("row")), str(meta.get("action"))] += 1
        elif event is TelemetryEvent.SUPPRESSED:
            # At notify time the event names no policy; in a job it does.
            policy = f"policy {meta['row']}" if meta.get("row") else "policy"
            self.rows[f"{policy}: {meta.get('reason')}", "suppress"] += 1
            ended = True
        elif event is TelemetryEvent.DEFERRED:
            self.rows[f"policy: {meta.get('reason')}", "defer"] += 1
        elif event is TelemetryEvent.STATUS_TRANSITION:
            ended = meta.get("to_status") in {s.value for s in TERMINAL_STATUSES}
        if ended:
            self.terminal += 1
            if self._on_terminal is not None:
                self._on_terminal(self.terminal)


def _batches(total: int, size: int) -> Iterator[range]:
    for start in range(0, total, size):
        yield range(start, min(start + size, total))


def _spec(seed: int, index: int) -> NewDelivery:
    return NewDelivery(
        channel=CHANNEL,
        recipient=f"user-{index:06d}@demo.invalid",
        payload={"template": "welcome", "n": index},
        notification_key="demo.welcome",
        idempotency_key=f"demo-{seed}-{index:06d}",
        max_attempts=DEMO_RETRY.max_attempts,
    )


def _attempt_histogram(store: SQLStore) -> tuple[tuple[int, int], ...]:
    count = DeliveryRow.attempt_count
    with store.engine.connect() as conn:
        found = dict(conn.execute(select(count, func.count()).group_by(count)).all())
    top = max(found, default=0)
    return tuple((n, found.get(n, 0)) for n in range(top + 1))


def _status_counts(store: SQLStore) -> tuple[StatusCount, ...]:
    order = {status: index for index, status in enumerate(DeliveryStatus)}
    counts = sorted(
        store.counts().items(), key=lambda item: (order[item[0][0]], item[0][1] or "", item[1])
    )
    return tuple(StatusCount(status, reason, n) for (status, reason), n in counts)


def run_demo(
    store: SQLStore,
    *,
    deliveries: int = 1000,
    seed: int = 0,
    mix: Mix = DEFAULT_MIX,
    batch_size: int = 200,
    on_terminal: Callable[[int], None] | None = None,
) -> DemoReport:
    """Send ``deliveries`` notifications through the simulated provider; report.

    ``store`` must have chimeway's tables and no deliveries (the counts in the
    report are the store's). ``on_terminal(n)`` is called each time one more
    delivery reaches a terminal status (for a progress bar). Notifications
    go in with ``notify_many`` in batches of ``batch_size``; the jobs due are
    run after each batch, and the rest (retries in virtual time) at the end.
    """
    if deliveries < 1:
        raise ValueError(f"deliveries must be >= 1, got {deliveries}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    clock = VirtualClock()
    backend = MemoryBackend(clock)
    provider = SimulatedProvider(seed=seed, mix=mix, clock=clock)
    telemetry = Telemetry()
    tally = _Tally(on_terminal)
    telemetry.subscribe(tally)
    engine = Chimeway(
        store,
        backend,
        {CHANNEL: provider},
        policies=[PreferencePolicy(provider.allows, name="preference")],
        retry=DEMO_RETRY,
        clock=clock,
        telemetry=telemetry,
        rand=random.Random(seed).random,  # noqa: S311 -- jitter, not secrets; seeded to repeat
    )
    started_virtual = clock.now()
    started_wall = time.perf_counter()
    for batch in _batches(deliveries, batch_size):
        engine.notify_many([_spec(seed, index) for index in batch])
        backend.run_due(engine)
    backend.run_until_idle(engine)
    engine.flush_outbox()
    wall = time.perf_counter() - started_wall
    rows = sorted(tally.rows.items(), key=lambda item: (-item[1], item[0]))
    return DemoReport(
        deliveries=deliveries,
        seed=seed,
        mix=mix,
        statuses=_status_counts(store),
        attempts=_attempt_histogram(store),
        rows=tuple(RowCount(row, action, n) for (row, action), n in rows),
        provider_calls=provider.calls,
        slow_answers=provider.slow_answers,
        timeouts=provider.timeouts,
        job_failures=len(backend.failures),
        virtual_seconds=(clock.now() - started_virtual).total_seconds(),
        wall_seconds=wall,
    )
