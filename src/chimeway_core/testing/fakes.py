"""Fake channels with scripted results.

:class:`FakeChannel` records every call (with its idempotency key and the
clock's time) and returns what a script says. :class:`ScriptedChannel` reads
its script from the recipient address (see :func:`script_for`), so a worker
process configured with it needs no shared state with the test.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import attrs

from chimeway_core.channels.base import DeliveryGuarantee, positive_seconds
from chimeway_core.clock import Clock, SystemClock, VirtualClock
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


def make_delivery(**changes: Any) -> Delivery:
    """A live :class:`~chimeway_core.records.Delivery` snapshot with plausible defaults.

    For unit tests of a channel or a policy, which take a delivery and need
    no ledger: ``make_delivery(recipient="+15550100", payload={...})``. Every
    field can be overridden; unspecified ones are a ``ready`` delivery created
    at 2030-01-01 UTC, never attempted.
    """
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

_ALWAYS_SENT: tuple[Step, ...] = (Sent(),)


@attrs.frozen
class Hang:
    """A script step: the call takes ``seconds`` (past the timeout), then its answer is lost.

    On a :class:`~chimeway_core.clock.VirtualClock` the clock is advanced;
    otherwise the call really sleeps. Then
    :class:`~chimeway_core.errors.OutcomeUnknownError` is raised, as a real
    channel does when its read timeout fires after the request went out.
    """

    seconds: float


@attrs.frozen
class LoseResponse:
    """A script step: the provider accepts the notification, then the answer is lost.

    The call is counted in :attr:`FakeChannel.accepted` (the provider's side
    effect happened) and :class:`~chimeway_core.errors.OutcomeUnknownError`
    is raised.
    """


@attrs.frozen
class ChannelCall:
    """One recorded call of a :class:`FakeChannel`."""

    delivery_id: UUID
    idempotency_key: str
    attempt: int
    """The delivery's attempt number at the time of the call."""
    at: datetime


class FakeChannel:
    """A channel whose results are scripted; it records every call.

    ``script`` is either a sequence (attempt *n* of each delivery gets item
    *n*; the last item repeats once the script runs out) or a function of the
    :class:`~chimeway_core.records.Delivery` being sent (its
    ``attempt_count`` is the attempt number). An item that is an exception is
    raised; anything else is returned, even values of undocumented shapes, so
    tests can exercise the dispatch table's catch-all. The default script
    always sends.
    """

    def __init__(
        self,
        script: Sequence[Step] | Callable[[Delivery], Step] = _ALWAYS_SENT,
        *,
        guarantee: DeliveryGuarantee = DeliveryGuarantee.AT_LEAST_ONCE,
        exception_class: ErrorClass = ErrorClass.TEMPORARY,
        timeout: float = 5.0,
        clock: Clock | None = None,
        on_call: Callable[[Delivery], None] | None = None,
    ) -> None:
        if not callable(script) and not script:
            raise ValueError("a FakeChannel script needs at least one step")
        self.script = script
        self.guarantee = guarantee
        self.exception_class = exception_class
        self.timeout = positive_seconds("timeout", timeout)
        self.clock: Clock = clock or SystemClock()
        self.on_call = on_call
        self._lock = threading.Lock()
        self._calls: list[ChannelCall] = []
        self._accepted: list[ChannelCall] = []

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
        """
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
        )
        with self._lock:
            self._calls.append(call)
        if self.on_call is not None:
            self.on_call(delivery)
        if callable(self.script):
            step = self.script(delivery)
        else:
            index = max(delivery.attempt_count, 1) - 1
            step = self.script[min(index, len(self.script) - 1)]
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


def script_for(*steps: str, tag: str = "") -> str:
    """A recipient address that scripts a :class:`ScriptedChannel`'s results.

    ``script_for("temporary", "temporary", "sent")`` fails twice, then sends.
    A step may carry a retry-after hint: ``"temporary@2.5"``. ``tag`` makes
    otherwise identical scripts distinct recipients.
    """
    for step in steps:
        name = step.split("@", 1)[0]
        if name not in SCRIPT_STEPS:
            raise ValueError(f"unknown script step {step!r}; known: {list(SCRIPT_STEPS)}")
    if not steps:
        raise ValueError("a script needs at least one step")
    return f"script:{'/'.join(steps)}#{tag}"


def _step(delivery: Delivery) -> ChannelResult | BaseException | object:
    recipient = delivery.recipient
    if not recipient.startswith("script:"):
        return PermanentFailure("recipient is not a script")
    steps = recipient[len("script:") :].split("#", 1)[0].split("/")
    step = steps[min(max(delivery.attempt_count, 1), len(steps)) - 1]
    name, _, hint = step.partition("@")
    match name:
        case "sent":
            return Sent(provider_response={"script_step": delivery.attempt_count})
        case "temporary":
            return TemporaryFailure("scripted", float(hint) if hint else None)
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
