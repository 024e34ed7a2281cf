"""Fake channels with scripted results.

:class:`FakeChannel` records every call (with its idempotency key and the
clock's time) and returns what a script says. :class:`ScriptedChannel` reads
its script from the recipient address (see :func:`script_for`), so a worker
process configured with it needs no shared state with the test.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import attrs

from chimeway_core import _checks
from chimeway_core.channels.base import DeliveryGuarantee, positive_seconds
from chimeway_core.clock import Clock, SystemClock, VirtualClock, ensure_aware
from chimeway_core.errors import OutcomeUnknownError
from chimeway_core.outcomes import (
    Bounced,
    ChannelResult,
    ErrorClass,
    PermanentFailure,
    Sent,
    TemporaryFailure,
)
from chimeway_core.records import Delivery
from chimeway_core.states import DeliveryStatus

__all__ = [
    "ChannelCall",
    "FakeChannel",
    "Hang",
    "LoseResponse",
    "ScriptedChannel",
    "make_delivery",
    "script_for",
]

_EPOCH = datetime(2030, 1, 1, tzinfo=UTC)

# make_delivery's checked fields: counts with their minimum, and times (the
# required ones may not be None).
_COUNTS = {"attempt_count": 0, "max_attempts": 1, "deferral_count": 0}
_REQUIRED_TIMES = ("scheduled_at", "created_at", "updated_at")
_TIMES = (*_REQUIRED_TIMES, "expires_at", "lease_expires_at")


def make_delivery(**changes: Any) -> Delivery:
    """A live :class:`~chimeway_core.records.Delivery` snapshot with plausible defaults.

    For unit tests of a channel or a policy, which take a delivery and need
    no ledger: ``make_delivery(recipient="+15550100", payload={...})``. Every
    field can be overridden; unspecified ones are a ``ready`` delivery created
    at 2030-01-01 UTC, never attempted.

    The fields a test could get wrong without noticing are checked here:
    ``status`` must be a :class:`~chimeway_core.states.DeliveryStatus`, the
    times tz-aware datetimes (returned in UTC), ``attempt_count`` and
    ``deferral_count`` ints >= 0 and ``max_attempts`` an int >= 1. A wrong
    kind is a :class:`TypeError`, a value out of range a :class:`ValueError`,
    both naming the field; an unknown field is a :class:`TypeError`.
    """
    status = changes.get("status", DeliveryStatus.READY)
    if not isinstance(status, DeliveryStatus):
        raise TypeError(f"status must be a DeliveryStatus, not {type(status).__name__}")
    for name, minimum in _COUNTS.items():
        if name in changes:
            _checks.whole(name, changes[name], minimum=minimum)
    for name in _TIMES:
        if name in changes and (changes[name] is not None or name in _REQUIRED_TIMES):
            changes[name] = ensure_aware(changes[name], name)
    base = Delivery(
        id=uuid.UUID(int=1),
        channel="fake",
        recipient="someone@example.test",
        payload=None,
        notification_key=None,
        idempotency_key="key-1",
        status=DeliveryStatus.READY,
        reason=None,
        attempt_count=0,
        max_attempts=5,
        scheduled_at=_EPOCH,
        expires_at=None,
        lease_owner=None,
        lease_expires_at=None,
        version=1,
        deferral_count=0,
        metadata={},
        created_at=_EPOCH,
        updated_at=_EPOCH,
    )
    return attrs.evolve(base, **changes)


#: What a script step may be: a result to return, or an exception to raise.
Step = ChannelResult | BaseException | object

#: What :class:`FakeChannel` takes as its script.
Script = Sequence[Step] | Callable[[Delivery], Step]

_ALWAYS_SENT: tuple[Step, ...] = (Sent(),)


def _check_hang_seconds(_: object, __: attrs.Attribute[float], value: float) -> None:
    _checks.seconds("seconds", value)


@attrs.frozen
class Hang:
    """A script step: the call takes ``seconds`` (past the timeout), then its answer is lost.

    On a :class:`~chimeway_core.clock.VirtualClock` the clock is advanced;
    otherwise the call really sleeps. Then
    :class:`~chimeway_core.errors.OutcomeUnknownError` is raised, as a real
    channel does when its read timeout fires after the request went out.

    ``seconds`` is a finite number >= 0 (0: the answer is lost at once),
    checked here: a wrong kind is a :class:`TypeError`, a value out of range
    a :class:`ValueError`.
    """

    seconds: float = attrs.field(validator=_check_hang_seconds)


@attrs.frozen
class LoseResponse:
    """A script step: the provider accepts the notification, then the answer is lost.

    The call is counted in :attr:`FakeChannel.accepted` (the provider's side
    effect happened) and :class:`~chimeway_core.errors.OutcomeUnknownError`
    is raised.
    """


@attrs.frozen
class ChannelCall:
    """One recorded call of a :class:`FakeChannel`: what was sent, to whom, when."""

    delivery_id: UUID
    idempotency_key: str
    attempt: int
    """The delivery's attempt number at the time of the call."""
    at: datetime
    channel: str = ""
    """The delivery's channel name."""
    recipient: str = ""
    payload: Any = attrs.field(default=None, hash=False)
    """The delivery's payload, as the channel was given it."""


class FakeChannel:
    """A channel whose results are scripted; it records every call.

    ``script`` is either a non-empty sequence such as a list or a tuple
    (attempt *n* of each delivery gets item *n*; the last item repeats once
    the script runs out) or a function of the
    :class:`~chimeway_core.records.Delivery` being sent (its
    ``attempt_count`` is the attempt number). An item that is an exception is
    raised; anything else is returned, even values of undocumented shapes, so
    tests can exercise the dispatch table's catch-all. The default script
    always sends.

    The options are checked when the channel is built, and the script also
    whenever :attr:`script` is assigned: a value of the wrong kind is a
    :class:`TypeError` naming the argument (a single step, a string, a
    generator, a mapping or a class is not a script), an empty script a
    :class:`ValueError`.
    """

    def __init__(
        self,
        script: Script = _ALWAYS_SENT,
        *,
        guarantee: DeliveryGuarantee = DeliveryGuarantee.AT_LEAST_ONCE,
        exception_class: ErrorClass = ErrorClass.TEMPORARY,
        timeout: float = 5.0,
        clock: Clock | None = None,
        on_call: Callable[[Delivery], None] | None = None,
    ) -> None:
        self.script = script
        if not isinstance(guarantee, DeliveryGuarantee):
            raise TypeError(
                f"guarantee must be a DeliveryGuarantee, not {type(guarantee).__name__}"
            )
        if not isinstance(exception_class, ErrorClass):
            raise TypeError(
                f"exception_class must be an ErrorClass, not {type(exception_class).__name__}"
            )
        if clock is not None and not isinstance(clock, Clock):
            raise TypeError(
                f"clock must have now() (chimeway_core.Clock), not {type(clock).__name__}"
            )
        if on_call is not None and not callable(on_call):
            raise TypeError(f"on_call must be callable or None, not {type(on_call).__name__}")
        self.guarantee = guarantee
        self.exception_class = exception_class
        self.timeout = positive_seconds("timeout", timeout)
        self.clock: Clock = SystemClock() if clock is None else clock
        self.on_call = on_call
        self._lock = threading.Lock()
        self._calls: list[ChannelCall] = []
        self._accepted: list[ChannelCall] = []

    @property
    def script(self) -> Script:
        """The script: a tuple of steps (a copy of the sequence given), or a function.

        Assigning it checks the new script as the constructor does; a
        refused one leaves the old script in place.
        """
        return self._script

    @script.setter
    def script(self, script: Script) -> None:
        self._script = _checked_script(script)

    @property
    def calls(self) -> list[ChannelCall]:
        """Every call so far, oldest first (a copy)."""
        with self._lock:
            return list(self._calls)

    @property
    def accepted(self) -> list[ChannelCall]:
        """The calls the provider acted on: sent, or accepted before the answer was lost."""
        with self._lock:
            return list(self._accepted)

    @classmethod
    def drawing(cls, draw: Callable[[], Step], **options: Any) -> FakeChannel:
        """A channel whose every call draws its step, e.g. from a hypothesis strategy.

        Inside a ``@given(data=st.data())`` test:
        ``FakeChannel.drawing(lambda: data.draw(strategies.channel_results))``.
        A ``draw`` that is not callable is a :class:`TypeError`.
        """
        if not callable(draw):
            raise TypeError(f"draw must be callable, not {type(draw).__name__}")
        return cls(lambda _delivery: draw(), **options)

    def calls_for(self, delivery_id: UUID) -> list[ChannelCall]:
        """The calls made for one delivery."""
        return [call for call in self.calls if call.delivery_id == delivery_id]

    def send(self, delivery: Delivery, idempotency_key: str) -> ChannelResult:
        """Record the call, then return or raise the script's next step."""
        call = ChannelCall(
            delivery_id=delivery.id,
            idempotency_key=idempotency_key,
            attempt=delivery.attempt_count,
            at=self.clock.now(),
            channel=delivery.channel,
            recipient=delivery.recipient,
            payload=delivery.payload,
        )
        with self._lock:
            self._calls.append(call)
        if self.on_call is not None:
            self.on_call(delivery)
        script = self._script
        if callable(script):
            step = script(delivery)
        else:
            index = max(delivery.attempt_count, 1) - 1
            step = script[min(index, len(script) - 1)]
        match step:
            case Hang(seconds=seconds):
                if isinstance(self.clock, VirtualClock):
                    self.clock.advance(seconds)
                else:
                    time.sleep(seconds)
                raise OutcomeUnknownError(f"no answer within {seconds} s")
            case LoseResponse():
                with self._lock:
                    self._accepted.append(call)
                raise OutcomeUnknownError("the connection dropped after the request was sent")
            case BaseException():
                raise step
            case Sent():
                with self._lock:
                    self._accepted.append(call)
                return step
            case _:
                return step  # type: ignore[return-value]  # undocumented shapes are the point


def _checked_script(script: object) -> Script:
    """``script`` as FakeChannel keeps it: a function, or a tuple of at least one step."""
    if isinstance(script, type):
        # A class is callable, and would be called with the delivery.
        raise TypeError(
            f"script must be a sequence of steps or a function of the delivery, not the class "
            f"{script.__qualname__} (a single step goes in a list: [{script.__qualname__}(...)])"
        )
    if callable(script):
        return script
    if not isinstance(script, Sequence) or isinstance(script, str | bytes | bytearray):
        if isinstance(script, str | bytes | bytearray):
            hint = "steps are values such as Sent(), not names"
        elif isinstance(script, Iterable):
            hint = "make it a list or a tuple"
        else:
            hint = "a single step goes in a list: [step]"
        raise TypeError(
            f"script must be a sequence of steps (a list or a tuple) or a function of the "
            f"delivery, not {type(script).__name__} ({hint})"
        )
    if not script:
        raise ValueError("a FakeChannel script needs at least one step")
    return tuple(script)


#: The steps a :class:`ScriptedChannel` understands, by name.
SCRIPT_STEPS: tuple[str, ...] = (
    "sent",
    "temporary",
    "permanent",
    "bounced",
    "unknown",
    "raise",
    "weird",
)


# The steps that may carry a retry-after hint ("temporary@2.5").
_HINTED_STEPS: tuple[str, ...] = ("temporary",)


def script_for(*steps: str, tag: str = "") -> str:
    """A recipient address that scripts a :class:`ScriptedChannel`'s results.

    ``script_for("temporary", "temporary", "sent")`` fails twice, then sends.
    Each argument is one step, a name from :data:`SCRIPT_STEPS`; a
    ``"temporary"`` step may carry a retry-after hint, a finite number of
    seconds >= 0: ``"temporary@2.5"``. ``tag`` makes otherwise identical
    scripts distinct recipients.

    The whole script is checked here: a step or tag that is not a ``str`` is
    a :class:`TypeError`; an unknown step, a hint that is not such a number
    or on a step that takes none, a step holding the separators ``/`` or
    ``#``, or no step at all a :class:`ValueError` naming the step.
    """
    if not isinstance(tag, str):
        raise TypeError(f"tag must be a str, not {type(tag).__name__}")
    if not steps:
        raise ValueError("a script needs at least one step")
    for step in steps:
        _parse_step(step)
    return f"script:{'/'.join(steps)}#{tag}"


def _parse_step(step: object) -> tuple[str, float | None]:
    """The name and retry-after hint of one step; raise naming the step if it is malformed."""
    if not isinstance(step, str):
        raise TypeError(f"a script step must be a str, not {type(step).__name__}")
    for separator in "/#":
        if separator in step:
            raise ValueError(
                f"script step {step!r} holds {separator!r}, which a script address reserves; "
                f"give each step as its own argument"
            )
    name, at, hint = step.partition("@")
    if name not in SCRIPT_STEPS:
        raise ValueError(f"unknown script step {step!r}; known: {list(SCRIPT_STEPS)}")
    if not at:
        return name, None
    if name not in _HINTED_STEPS:
        raise ValueError(
            f"script step {step!r}: only {list(_HINTED_STEPS)} take a retry-after hint"
        )
    try:
        seconds = float(hint)
    except ValueError:
        seconds = math.nan  # not a number: refused below, in the same words
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(
            f"script step {step!r}: the retry-after hint must be a finite number of seconds >= 0"
        )
    return name, seconds


def _step(delivery: Delivery) -> ChannelResult | BaseException | object:
    recipient = delivery.recipient
    if not recipient.startswith("script:"):
        return PermanentFailure("recipient is not a script")
    try:
        steps = [
            _parse_step(step) for step in recipient[len("script:") :].split("#", 1)[0].split("/")
        ]
    except ValueError as error:  # a hand-written address: this call's failure, not a crash
        return PermanentFailure(f"recipient is not a valid script: {error}")
    name, hint = steps[min(max(delivery.attempt_count, 1), len(steps)) - 1]
    match name:
        case "sent":
            return Sent(provider_response={"script_step": delivery.attempt_count})
        case "temporary":
            return TemporaryFailure("scripted", hint)
        case "permanent":
            return PermanentFailure("scripted")
        case "bounced":
            return Bounced("scripted")
        case "unknown":
            return OutcomeUnknownError("scripted: the answer was lost")
        case "raise":
            return RuntimeError("scripted failure")
        case _:
            return {"undocumented": "shape"}


class ScriptedChannel(FakeChannel):
    """A :class:`FakeChannel` whose script is the recipient address.

    Build recipients with :func:`script_for`. Because the script travels with
    the delivery, a worker in another process (RQ, Celery) produces exactly
    the results the test wrote, and the test reads the outcome from the
    ledger.
    """

    def __init__(
        self,
        *,
        guarantee: DeliveryGuarantee = DeliveryGuarantee.AT_LEAST_ONCE,
        timeout: float = 5.0,
        clock: Clock | None = None,
        on_call: Callable[[Delivery], None] | None = None,
    ) -> None:
        super().__init__(_step, guarantee=guarantee, timeout=timeout, clock=clock, on_call=on_call)
