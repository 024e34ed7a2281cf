"""Policies: whether a delivery may be sent now, later, or never.

Theory of operation
-------------------
A :class:`Policy` looks at a :class:`~chimeway_core.records.Delivery` and a
:class:`PolicyContext` and returns one of three frozen decisions:

- :class:`Proceed` — nothing to object to;
- :class:`Suppress` — never send it; the delivery becomes ``suppressed`` with
  the policy's reason (a terminal status);
- :class:`Defer` — not before ``until``; the delivery's ``scheduled_at`` moves
  and the job is enqueued again for then. A deferral consumes no attempt.

The engine evaluates policies twice: at ``notify()`` time (phase
:attr:`PolicyPhase.NOTIFY`, on the delivery as it is about to be written: its
input validated, its id and defaults filled in) and in the worker right
before the channel is called (phase :attr:`PolicyPhase.PERFORM`). Policies
are pure with respect to chimeway: they read the delivery, the context and
the application's callbacks, and write nothing.

:func:`evaluate_policies` combines a sequence of policies: the first
:class:`Suppress` wins at once (later policies are not consulted); otherwise
the latest :class:`Defer` wins, so a single deferral satisfies every policy
that asked for one. A policy that raises is never swallowed: the exception is
wrapped in :class:`~chimeway_core.errors.PolicyError`, which names the policy
and the delivery.

A delivery could be deferred forever (a rate limit that never frees up, quiet
hours misconfigured to cover the whole day). :func:`apply_deferral_bound`
turns the deferral of a delivery already deferred :data:`MAX_DEFERRALS` times
into ``Suppress("too_many_deferrals")``, so every delivery still ends.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, time, timedelta
from typing import Final, Protocol, TypeAlias, assert_never, runtime_checkable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs

from chimeway_core.clock import ensure_aware
from chimeway_core.errors import PolicyError
from chimeway_core.records import Delivery
from chimeway_core.states import Reason

__all__ = [
    "MAX_DEFERRALS",
    "Defer",
    "ExpiryPolicy",
    "Policy",
    "PolicyContext",
    "PolicyDecision",
    "PolicyPhase",
    "PreferencePolicy",
    "Proceed",
    "QuietHoursPolicy",
    "RateLimitAction",
    "RateLimitPolicy",
    "ReadStatePolicy",
    "RecentAttempts",
    "RecipientAttempts",
    "RecipientRateLimitPolicy",
    "Suppress",
    "apply_deferral_bound",
    "evaluate_policies",
]

#: How many times a delivery may be deferred before the next deferral becomes
#: ``Suppress("too_many_deferrals")``. Engines take it as their default.
MAX_DEFERRALS: Final = 100


def _reason(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"reason must be a non-empty string, got {value!r}")
    # A Reason member is stored as its plain value so decisions compare, print
    # and serialize the same whichever way they were built.
    return str(value)


def _aware_utc(value: object) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"until must be a datetime, not {type(value).__name__}")
    return ensure_aware(value, "until")


@attrs.frozen
class Proceed:
    """The policy has no objection: the delivery may be sent now."""


@attrs.frozen
class Suppress:
    """The delivery must never be sent; ``reason`` is written on the delivery."""

    reason: str = attrs.field(converter=_reason)


@attrs.frozen
class Defer:
    """The delivery must not be sent before ``until`` (tz-aware, stored in UTC)."""

    until: datetime = attrs.field(converter=_aware_utc)
    reason: str = attrs.field(converter=_reason)


#: What a policy returns.
PolicyDecision: TypeAlias = Proceed | Suppress | Defer

#: ``(channel, recipient, since) -> attempts started at or after since``.
RecentAttempts: TypeAlias = Callable[[str, str, datetime], int]

#: ``(recipient, channels, since) -> attempts started at or after since`` to the
#: recipient on any of ``channels`` (on every channel when ``None``).
RecipientAttempts: TypeAlias = Callable[[str, frozenset[str] | None, datetime], int]


class PolicyPhase(enum.StrEnum):
    """When a policy is being evaluated."""

    NOTIFY = "notify"
    """In ``notify()``, on the validated delivery about to be written."""
    PERFORM = "perform"
    """In the worker, right before the channel would be called."""


def _check_aware(_: object, attribute: attrs.Attribute[datetime], value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{attribute.name} must be a timezone-aware datetime, got {value!r}")


@attrs.frozen(kw_only=True)
class PolicyContext:
    """What a policy may know besides the delivery.

    ``now`` is tz-aware; ``recent_attempts`` counts the attempts started for a
    channel and recipient since a given instant, across every worker (the
    engine wires it to the store); ``recipient_attempts`` counts them for a
    recipient over a set of channels, or over every channel (the engine wires
    it too; ``None`` in a context built without it).
    """

    now: datetime = attrs.field(validator=_check_aware)
    phase: PolicyPhase = attrs.field(validator=attrs.validators.instance_of(PolicyPhase))
    recent_attempts: RecentAttempts
    recipient_attempts: RecipientAttempts | None = None


def _policy_name(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{attribute.name} must be a non-empty str, got {value!r}")


@runtime_checkable
class Policy(Protocol):
    """Anything with a ``name`` and an ``evaluate`` returning a decision."""

    @property
    def name(self) -> str:
        """A short, stable name, recorded with the decision it makes."""
        ...

    def evaluate(self, delivery: Delivery, context: PolicyContext) -> PolicyDecision:
        """Decide about ``delivery``; must not write anything."""
        ...


@attrs.frozen
class PreferencePolicy:
    """Suppress with ``opted_out`` when the application's ``is_allowed`` says no."""

    is_allowed: Callable[[Delivery], bool] = attrs.field(validator=attrs.validators.is_callable())
    name: str = attrs.field(default="preference", kw_only=True, validator=_policy_name)

    def evaluate(self, delivery: Delivery, context: PolicyContext) -> PolicyDecision:  # noqa: ARG002 -- the protocol's shape
        """Proceed when the recipient allows it, otherwise ``Suppress("opted_out")``."""
        if self.is_allowed(delivery):
            return Proceed()
        return Suppress(Reason.OPTED_OUT)


@attrs.frozen
class ReadStatePolicy:
    """Suppress with ``already_read`` when the application says it was read in-app."""

    is_read: Callable[[Delivery], bool] = attrs.field(validator=attrs.validators.is_callable())
    name: str = attrs.field(default="read_state", kw_only=True, validator=_policy_name)

    def evaluate(self, delivery: Delivery, context: PolicyContext) -> PolicyDecision:  # noqa: ARG002 -- the protocol's shape
        """``Suppress("already_read")`` when ``is_read`` is true, otherwise Proceed."""
        if self.is_read(delivery):
            return Suppress(Reason.ALREADY_READ)
        return Proceed()


@attrs.frozen
class ExpiryPolicy:
    """Suppress with ``expired`` once ``now >= delivery.expires_at``."""

    name: str = attrs.field(default="expiry", kw_only=True, validator=_policy_name)

    def evaluate(self, delivery: Delivery, context: PolicyContext) -> PolicyDecision:
        """``Suppress("expired")`` at or after ``expires_at``; Proceed without one."""
        if delivery.expires_at is not None and context.now >= delivery.expires_at:
            return Suppress(Reason.EXPIRED)
        return Proceed()


def _naive_time(_: object, attribute: attrs.Attribute[time], value: time) -> None:
    if not isinstance(value, time):
        raise TypeError(f"{attribute.name} must be a datetime.time, not {type(value).__name__}")
    if value.tzinfo is not None:
        raise ValueError(f"{attribute.name} is a wall-clock time and must be naive, got {value!r}")


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}") from None


def _valid_zone(_: object, __: attrs.Attribute[str], value: str) -> None:
    _zone(value)


def _wall(instant: datetime, zone: ZoneInfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None)


def _instants_reading(day: date, wall: time, zone: ZoneInfo) -> list[datetime]:
    """The UTC instants at which the clock in ``zone`` reads ``wall`` on ``day``.

    Two in a fall-back repeat, one usually. When a spring-forward skips
    ``wall``, the one instant returned is the jump itself: the first instant at
    which the clock reads later than ``wall``.
    """
    naive = datetime.combine(day, wall)
    found: list[datetime] = []
    for fold in (0, 1):
        instant = naive.replace(tzinfo=zone, fold=fold).astimezone(UTC)
        if _wall(instant, zone) == naive and instant not in found:
            found.append(instant)
    if found:
        return found
    # In a gap, fold=1 resolves with the offset after the jump (an instant
    # before it) and fold=0 with the offset before it (an instant after it).
    # Bisect to the whole second at which the clock passes ``wall``; zone
    # transitions fall on whole seconds.
    before = int(naive.replace(tzinfo=zone, fold=1).timestamp())
    after = int(naive.replace(tzinfo=zone, fold=0).timestamp())
    while after - before > 1:
        middle = (before + after) // 2
        if _wall(datetime.fromtimestamp(middle, UTC), zone) >= naive:
            after = middle
        else:
            before = middle
    return [datetime.fromtimestamp(after, UTC)]


@attrs.frozen
class QuietHoursPolicy:
    """Defer deliveries that fall in the recipient's local quiet window.

    The window is ``[start, end)`` on the recipient's wall clock, in the zone
    ``timezone_for(delivery)`` names (``default_timezone`` when it returns
    ``None``). ``start > end`` wraps midnight (``22:00`` to ``07:00``). Inside the
    window the decision is ``Defer(until, "quiet_hours")`` where ``until`` is
    the window's end: the first instant after ``now`` at which the wall clock
    reads ``end`` (or, on a spring-forward day that skips ``end``, the instant
    the clock jumps past it). An unknown zone name raises :class:`ValueError`.
    """

    start: time = attrs.field(validator=_naive_time)
    end: time = attrs.field(validator=_naive_time)
    timezone_for: Callable[[Delivery], str | None] = attrs.field(
        validator=attrs.validators.is_callable()
    )
    default_timezone: str = attrs.field(default="UTC", validator=_valid_zone)
    name: str = attrs.field(default="quiet_hours", kw_only=True, validator=_policy_name)

    def __attrs_post_init__(self) -> None:
        if self.start == self.end:
            raise ValueError(f"quiet hours start and end are both {self.start}: an empty window")

    def contains(self, wall: time) -> bool:
        """Whether the wall-clock time ``wall`` is inside the quiet window."""
        if self.start < self.end:
            return self.start <= wall < self.end
        return wall >= self.start or wall < self.end

    def evaluate(self, delivery: Delivery, context: PolicyContext) -> PolicyDecision:
        """Proceed outside the window; inside it, defer to the window's end."""
        zone = _zone(self.timezone_for(delivery) or self.default_timezone)
        now = context.now.astimezone(UTC)
        local = _wall(now, zone)
        if not self.contains(local.time()):
            return Proceed()
        today = local.date()
        candidates = [
            instant
            for day in (today, today + timedelta(days=1))
            for instant in _instants_reading(day, self.end, zone)
            if instant > now
        ]
        return Defer(min(candidates), Reason.QUIET_HOURS)


def _positive_int(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int or value < 1:
        raise ValueError(f"{attribute.name} must be an int >= 1, got {value!r}")


def _positive_duration(_: object, attribute: attrs.Attribute[timedelta], value: timedelta) -> None:
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise ValueError(f"{attribute.name} must be a positive timedelta, got {value!r}")


def _frees_at(
    has_room: Callable[[datetime], bool], now: datetime, per: timedelta, probes: int
) -> datetime | None:
    """When a sliding window of ``per`` ending at ``now`` has room again; ``None``: it has.

    ``has_room(since)`` says whether the attempts started at or after
    ``since`` are fewer than the limit. The instant is the earliest at which
    the window will have room if no new attempt starts, found by bisection
    with ``probes`` more counts and rounded up: never early, at most
    ``per / 2**probes`` late.
    """
    now = now.astimezone(UTC)
    full, free = now - per, now
    if has_room(full):
        return None
    if not has_room(free):
        # Attempts stamped at or after now fill the window by themselves
        # (another worker's clock runs ahead): the window counts ``since``
        # inclusively, so wait a whole window plus one step of resolution.
        step: timedelta = per / 2**probes
        return now + per + step
    for _ in range(probes):
        middle = full + (free - full) / 2
        if has_room(middle):
            free = middle
        else:
            full = middle
    return free + per


def _at_perform(phase: PolicyPhase) -> bool:
    match phase:
        case PolicyPhase.NOTIFY:
            return False
        case PolicyPhase.PERFORM:
            return True
        case _:
            assert_never(phase)


class RateLimitAction(enum.StrEnum):
    """What a rate limit does with a delivery over its limit."""

    DEFER = "defer"
    """Wait until the window has room again (``Defer``)."""
    SUPPRESS = "suppress"
    """Never send it (``Suppress``): the delivery ends ``suppressed``."""


def _over_limit(
    action: RateLimitAction,
    has_room: Callable[[datetime], bool],
    now: datetime,
    per: timedelta,
    probes: int,
    reason: Reason,
) -> PolicyDecision:
    """Proceed while the window ending at ``now`` has room; else act as ``action`` says."""
    match action:
        case RateLimitAction.SUPPRESS:
            return Proceed() if has_room(now.astimezone(UTC) - per) else Suppress(reason)
        case RateLimitAction.DEFER:
            until = _frees_at(has_room, now, per, probes)
            return Proceed() if until is None else Defer(until, reason)
        case _:
            assert_never(action)


@attrs.frozen
class RateLimitPolicy:
    """At most ``limit`` attempts per ``per`` for one recipient on one channel.

    A sliding window: at ``now`` it counts the attempts started since
    ``now - per`` with ``context.recent_attempts`` (shared by every worker
    through the store). Below ``limit`` it proceeds; at or over it, with
    ``action`` :attr:`RateLimitAction.DEFER` (the default) it defers with
    ``rate_limited`` until the earliest instant at which the window will hold
    fewer than ``limit`` attempts if no new one starts. That instant is found
    by bisection with ``probes`` more counts, rounded up, so it is never early
    and at most ``per / 2**probes`` late. With :attr:`RateLimitAction.SUPPRESS`
    it suppresses with ``rate_limited`` instead. It only applies at
    :attr:`PolicyPhase.PERFORM`; at ``notify()`` time it always proceeds.
    """

    limit: int = attrs.field(validator=_positive_int)
    per: timedelta = attrs.field(validator=_positive_duration)
    action: RateLimitAction = attrs.field(
        default=RateLimitAction.DEFER,
        kw_only=True,
        validator=attrs.validators.instance_of(RateLimitAction),
    )
    probes: int = attrs.field(default=8, kw_only=True, validator=_positive_int)
    name: str = attrs.field(default="rate_limit", kw_only=True, validator=_policy_name)

    def evaluate(self, delivery: Delivery, context: PolicyContext) -> PolicyDecision:
        """Proceed below the limit (or at NOTIFY); otherwise defer or suppress, per ``action``."""
        if not _at_perform(context.phase):
            return Proceed()

        def has_room(since: datetime) -> bool:
            return context.recent_attempts(delivery.channel, delivery.recipient, since) < self.limit

        return _over_limit(
            self.action, has_room, context.now, self.per, self.probes, Reason.RATE_LIMITED
        )


def _channel_set(value: object) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise TypeError(f"channels must be a collection of channel names or None, got {value!r}")
    channels = frozenset(value)
    if not channels or not all(isinstance(c, str) and c for c in channels):
        raise ValueError(f"channels must be non-empty strings, at least one, got {value!r}")
    return channels


@attrs.frozen
class RecipientRateLimitPolicy:
    """At most ``limit`` attempts per ``per`` for one recipient across channels.

    The cap :class:`RateLimitPolicy` puts on one channel, over several: at
    ``now`` it counts the attempts started since ``now - per`` to the
    delivery's recipient on any of ``channels`` (every channel when
    ``None``) with ``context.recipient_attempts``, shared by every worker
    through the store. A delivery on a channel outside ``channels`` proceeds
    (and its attempts do not count). Below ``limit`` it proceeds; at or over
    it, with ``action`` :attr:`RateLimitAction.DEFER` it defers with
    ``recipient_rate_limited`` until the window will have room, exactly as
    :class:`RateLimitPolicy` computes it (never early, at most
    ``per / 2**probes`` late); with :attr:`RateLimitAction.SUPPRESS` it
    suppresses with ``recipient_rate_limited``. It only applies at
    :attr:`PolicyPhase.PERFORM`; at ``notify()`` time it always proceeds. A
    context without ``recipient_attempts`` is a :class:`TypeError`.
    """

    limit: int = attrs.field(validator=_positive_int)
    per: timedelta = attrs.field(validator=_positive_duration)
    channels: frozenset[str] | None = attrs.field(
        default=None, kw_only=True, converter=_channel_set
    )
    action: RateLimitAction = attrs.field(
        default=RateLimitAction.DEFER,
        kw_only=True,
        validator=attrs.validators.instance_of(RateLimitAction),
    )
    probes: int = attrs.field(default=8, kw_only=True, validator=_positive_int)
    name: str = attrs.field(default="recipient_rate_limit", kw_only=True, validator=_policy_name)

    def covers(self, channel: str) -> bool:
        """Whether attempts on ``channel`` count toward the cap, and its deliveries obey it."""
        return self.channels is None or channel in self.channels

    def evaluate(self, delivery: Delivery, context: PolicyContext) -> PolicyDecision:
        """Proceed below the cap, off its channels or at NOTIFY; otherwise defer or suppress."""
        if not _at_perform(context.phase) or not self.covers(delivery.channel):
            return Proceed()
        count = context.recipient_attempts
        if count is None:
            raise TypeError("the policy context has no recipient_attempts to count with")

        def has_room(since: datetime) -> bool:
            return count(delivery.recipient, self.channels, since) < self.limit

        return _over_limit(
            self.action,
            has_room,
            context.now,
            self.per,
            self.probes,
            Reason.RECIPIENT_RATE_LIMITED,
        )


def _decide(policy: Policy, delivery: Delivery, context: PolicyContext) -> PolicyDecision:
    try:
        decision: object = policy.evaluate(delivery, context)
    except Exception as error:
        raise PolicyError(policy.name, delivery.id, type(error).__qualname__) from error
    match decision:
        case Proceed() | Suppress() | Defer():
            return decision
        case _:
            problem = TypeError(
                f"policy returned {type(decision).__qualname__}, not Proceed, Suppress or Defer"
            )
            raise PolicyError(policy.name, delivery.id, "TypeError") from problem


def evaluate_policies(
    policies: Iterable[Policy], delivery: Delivery, context: PolicyContext
) -> tuple[PolicyDecision, str | None]:
    """Combine ``policies``, in order, into one decision and the name of its maker.

    The first :class:`Suppress` is returned at once. Otherwise the
    :class:`Defer` with the latest ``until`` is returned (the first of equals),
    or ``(Proceed(), None)`` when every policy proceeds. A policy that raises,
    or returns something other than a decision, raises
    :class:`~chimeway_core.errors.PolicyError`.
    """
    latest: tuple[Defer, str] | None = None
    for policy in policies:
        decision = _decide(policy, delivery, context)
        match decision:
            case Proceed():
                continue
            case Suppress():
                return decision, policy.name
            case Defer():
                if latest is None or decision.until > latest[0].until:
                    latest = (decision, policy.name)
            case _:
                assert_never(decision)
    if latest is None:
        return Proceed(), None
    return latest


def apply_deferral_bound(
    decision: PolicyDecision, delivery: Delivery, max_deferrals: int = MAX_DEFERRALS
) -> PolicyDecision:
    """Turn a deferral past the bound into ``Suppress("too_many_deferrals")``.

    A :class:`Defer` for a delivery whose ``deferral_count`` is already
    ``max_deferrals`` or more becomes the suppression; every other decision is
    returned unchanged.
    """
    if type(max_deferrals) is not int or max_deferrals < 0:
        raise ValueError(f"max_deferrals must be an int >= 0, got {max_deferrals!r}")
    match decision:
        case Defer() if delivery.deferral_count >= max_deferrals:
            return Suppress(Reason.TOO_MANY_DEFERRALS)
        case Proceed() | Suppress() | Defer():
            return decision
        case _:
            assert_never(decision)
