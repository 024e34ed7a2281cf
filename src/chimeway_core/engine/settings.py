"""The engine's settings: checked once, against each other, then fixed.

Theory of operation
-------------------
:func:`build_settings` is everything :class:`~chimeway_core.engine.Chimeway`
checks when it is built, in the order it always checked them: the numbers,
the kinds of the parts (store, backend, clock, telemetry, random source), the
channels, the policies, the retry policies, the routes, then the retention
against :attr:`Settings.min_retention`. What passes becomes one frozen
:class:`Settings` value that every stage of the pipeline holds; its mappings
are read-only, so the checks hold for the engine's life.

The collaborators (store, backend, clock, telemetry) are not settings: a test
swaps them for doubles, and each stage takes the ones it uses explicitly.
:func:`meta` and :func:`policy_context` are what several stages share: the
safe telemetry metadata of a delivery, and what a policy may read.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from types import MappingProxyType

import attrs

from chimeway_core._checks import seconds, whole
from chimeway_core.backend import as_backend
from chimeway_core.channels.base import Channel
from chimeway_core.clock import Clock, SystemClock
from chimeway_core.errors import UnknownChannelError
from chimeway_core.jobs import Backend
from chimeway_core.ledger.protocol import Ledger, LockedRow
from chimeway_core.policies import (
    ExpiryPolicy,
    Policy,
    PolicyContext,
    PolicyPhase,
    RateLimitPolicy,
    RecentAttempts,
    RecipientAttempts,
    RecipientRateLimitPolicy,
)
from chimeway_core.records import Delivery
from chimeway_core.retry import RetryPolicy
from chimeway_core.store import SQLStore
from chimeway_core.telemetry import Telemetry

__all__ = ["Settings", "build_settings", "meta", "policy_context"]


@attrs.frozen(eq=False)
class Settings:
    """What an engine was built with, checked; shared read-only by every stage."""

    channels: Mapping[str, Channel]
    """Channel name → channel (a read-only mapping)."""
    routes: Mapping[str, str]
    """Channel name → the queue its jobs go to (a read-only mapping)."""
    policies: tuple[Policy, ...]
    """:class:`ExpiryPolicy` first, then the application's, in order."""
    retry: RetryPolicy
    channel_retry: Mapping[str, RetryPolicy]
    lease_margin: float
    max_deferrals: int
    relay_grace: timedelta
    requeue_after: timedelta
    retention: float | None
    rand: Callable[[], float]
    """The jitter's random source."""
    interrupts: tuple[type[BaseException], ...]
    """What the backend raises inside a job to stop it: left to propagate."""
    identity: str
    """``host:random``: the first part of every lease owner this engine writes."""

    def channel(self, name: str) -> Channel:
        """The channel ``name``; :class:`UnknownChannelError` if the engine has none."""
        try:
            return self.channels[name]
        except KeyError:
            raise UnknownChannelError(name, tuple(sorted(self.channels))) from None

    def retry_for(self, channel: str) -> RetryPolicy:
        """The retry policy of ``channel``: its own, else the default."""
        return self.channel_retry.get(channel, self.retry)

    def queue_for(self, channel: str) -> str | None:
        """The queue a ``channel``'s jobs go to: its route, or ``None`` for the default."""
        return self.routes.get(channel)

    def owner(self) -> str:
        """The lease owner of the calling thread: ``host:random:pid:thread``."""
        return f"{self.identity}:{os.getpid()}:{threading.get_ident()}"

    @property
    def min_retention(self) -> float:
        """The longest lease or rate-limit window, in seconds (see ``Chimeway.min_retention``)."""
        leases = [channel.timeout + self.lease_margin for channel in self.channels.values()]
        windows = [
            policy.per.total_seconds()
            for policy in self.policies
            if isinstance(policy, RateLimitPolicy | RecipientRateLimitPolicy)
        ]
        return max([self.lease_margin, *leases, *windows])

    def prune_cutoff(self, name: str, age: object, now: datetime) -> datetime:
        """``now`` less ``age`` seconds, which must be at least :attr:`min_retention`."""
        checked = seconds(name, age, positive=True)
        shortest = self.min_retention
        if checked < shortest:
            raise ValueError(
                f"{name} must be at least the engine's min_retention ({shortest:g} s: "
                f"its longest lease or rate-limit window), got {age!r}"
            )
        try:
            return now - timedelta(seconds=checked)
        except OverflowError:
            raise ValueError(f"{name} reaches back before the year 1, got {age!r}") from None


def build_settings(
    store: object,
    backend: object,
    channels: Mapping[str, Channel],
    *,
    routes: Mapping[str, str] | None,
    policies: Sequence[Policy],
    retry: RetryPolicy | None,
    channel_retry: Mapping[str, RetryPolicy] | None,
    clock: Clock | None,
    telemetry: Telemetry | None,
    lease_margin: float,
    max_deferrals: int,
    relay_grace: float,
    requeue_after: float,
    retention: float | None,
    rand: Callable[[], float],
) -> Settings:
    """Check an engine's arguments against each other; raise for the first wrong one.

    ``clock`` and ``telemetry`` are only checked here (the retention is
    checked against the time ``clock`` tells, the system's without one). A setting out
    of range is a :class:`ValueError` naming it, a part of the wrong kind a
    :class:`TypeError`.
    """
    seconds("lease_margin", lease_margin, positive=True)
    seconds("relay_grace", relay_grace)
    seconds("requeue_after", requeue_after)
    whole("max_deferrals", max_deferrals, minimum=0)
    _check_parts(store, backend, clock, telemetry, rand)
    _check_channels(channels)
    for policy in policies:
        if not isinstance(policy, Policy):
            raise TypeError(
                f"a policy must have a name and evaluate(), not {type(policy).__name__}"
            )
    _check_retries(retry, channel_retry, channels)
    adopted = as_backend(backend)  # type: ignore[arg-type]  # _check_parts checked its kind
    _check_routes(routes, channels, adopted, type(backend).__qualname__)
    settings = Settings(
        # Read-only views: the checks above (and min_retention) hold for the engine's life.
        channels=MappingProxyType(dict(channels)),
        routes=MappingProxyType(dict(routes or {})),
        policies=(ExpiryPolicy(), *policies),
        retry=retry or RetryPolicy(),
        channel_retry=MappingProxyType(dict(channel_retry or {})),
        lease_margin=lease_margin,
        max_deferrals=max_deferrals,
        relay_grace=timedelta(seconds=relay_grace),
        requeue_after=timedelta(seconds=requeue_after),
        retention=retention,
        rand=rand,
        interrupts=adopted.interrupts,
        identity=f"{socket.gethostname()}:{uuid.uuid4().hex[:8]}",
    )
    if retention is not None:  # checked now, as every rescue() will use it
        settings.prune_cutoff("retention", retention, (clock or SystemClock()).now())
    return settings


def _check_parts(
    store: object, backend: object, clock: object, telemetry: object, rand: object
) -> None:
    """Raise TypeError for an engine part that is not of the kind it must be."""
    if not isinstance(store, SQLStore):
        raise TypeError(f"store must be a SQLStore, not {type(store).__name__}")
    if not isinstance(backend, Backend):
        raise TypeError(
            f"backend must have enqueue() and enqueue_many() (chimeway_core.jobs.Backend), "
            f"not {type(backend).__name__}"
        )
    if clock is not None and not isinstance(clock, Clock):
        raise TypeError(f"clock must have now() (chimeway_core.Clock), not {type(clock).__name__}")
    if telemetry is not None and not isinstance(telemetry, Telemetry):
        raise TypeError(f"telemetry must be a Telemetry, not {type(telemetry).__name__}")
    if not callable(rand):
        raise TypeError(f"rand must be callable, not {type(rand).__name__}")


def _check_routes(
    routes: Mapping[str, object] | None,
    channels: Mapping[str, object],
    backend: Backend,
    kind: str,
) -> None:
    """Raise for routes other than this engine's channels to queue names, or unfollowable.

    ``backend`` says whether it follows routes; ``kind`` names the class the user gave.
    """
    if routes is None:
        return
    _check_per_channel("routes", routes, channels, "queue names")
    for channel, queue in routes.items():
        if not isinstance(queue, str):
            raise TypeError(f"routes[{channel!r}] must be a queue name, not {type(queue).__name__}")
        if not queue:
            raise ValueError(f"routes[{channel!r}] must be a non-empty queue name")
    if routes and not backend.follows_routes:
        raise TypeError(
            f"routes need a backend whose enqueue() and enqueue_many() take queue=; {kind}'s do not"
        )


def _check_per_channel(
    name: str, mapping: object, channels: Mapping[str, object], values: str
) -> None:
    """Raise unless ``mapping`` is a mapping whose keys are all channels of this engine."""
    if not isinstance(mapping, Mapping):
        raise TypeError(
            f"{name} must be a mapping of channel names to {values}, not {type(mapping).__name__}"
        )
    unknown = sorted(str(key) for key in mapping if key not in channels)
    if unknown:
        # Most likely a typo: the channel would silently keep the default.
        raise ValueError(
            f"{name} names channels this engine does not have: {unknown}; "
            f"its channels are {sorted(channels)}"
        )


def _check_channels(channels: object) -> None:
    """Raise for channels that are no mapping of names to channels with a usable timeout."""
    if not isinstance(channels, Mapping):
        raise TypeError(
            f"channels must be a mapping of names to channels, not {type(channels).__name__}"
        )
    for name, channel in channels.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"a channel name must be a non-empty str, not {name!r}")
        if not isinstance(channel, Channel):
            raise TypeError(
                f"channel {name!r} must have guarantee, exception_class, timeout and send() "
                f"(chimeway_core.channels.Channel), not {type(channel).__name__}"
            )
        # The lease is the timeout plus the margin: it must be a real, positive time.
        seconds(f"channel {name!r}: timeout", channel.timeout, positive=True)


def _check_retries(
    retry: object, channel_retry: Mapping[str, object] | None, channels: Mapping[str, object]
) -> None:
    """Raise for a retry policy that is none, or one given for a channel that does not exist."""
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise TypeError(f"retry must be a RetryPolicy, not {type(retry).__name__}")
    if channel_retry is None:
        return
    _check_per_channel("channel_retry", channel_retry, channels, "RetryPolicy")
    for name, policy in channel_retry.items():
        if not isinstance(policy, RetryPolicy):
            raise TypeError(
                f"channel_retry[{name!r}] must be a RetryPolicy, not {type(policy).__name__}"
            )


def meta(delivery: Delivery) -> dict[str, object]:
    """A delivery's safe telemetry metadata: ids, channel, key, status, never a payload.

    With the trace ``notify()`` ran in, when one was stored, so a tracing
    subscriber continues it.
    """
    found: dict[str, object] = {
        "delivery_id": str(delivery.id),
        "channel": delivery.channel,
        "notification_key": delivery.notification_key,
        "status": delivery.status.value,
        "max_attempts": delivery.max_attempts,
    }
    if delivery.trace_context is not None:
        found["trace_context"] = delivery.trace_context
    return found


def ended(delivery: Delivery) -> dict[str, object]:
    """What a terminal delivery's event adds, for metrics; nothing for a live one.

    ``age``: seconds from ``notify()`` to the terminal write; ``attempt_count``
    the attempts it took; ``reason`` why it ended.
    """
    if not delivery.is_terminal:
        return {}
    return {
        "age": (delivery.updated_at - delivery.created_at).total_seconds(),
        "attempt_count": delivery.attempt_count,
        "reason": delivery.reason,
    }


def policy_context(
    store: Ledger, now: datetime, phase: PolicyPhase, locked: LockedRow | None = None
) -> PolicyContext:
    """What a policy may read: the time, the phase, and counts of recent attempts."""
    # At perform time, counts run inside the lock's transaction (one
    # connection: SQLite in memory has only one).
    recent: RecentAttempts = (
        locked.recent_attempts
        if locked is not None
        else lambda channel, recipient, since: store.count_recent_attempts(
            channel=channel, recipient=recipient, since=since
        )
    )
    across: RecipientAttempts = (
        locked.recipient_attempts
        if locked is not None
        else lambda recipient, channels, since: store.count_recipient_attempts(
            recipient=recipient, since=since, channels=channels
        )
    )
    return PolicyContext(now=now, phase=phase, recent_attempts=recent, recipient_attempts=across)
