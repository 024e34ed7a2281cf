"""The delivery state machine.

Theory of operation
-------------------
A delivery has one of five statuses. ``ready`` is where it starts, ``failed``
is where it waits after a temporary failure, and ``succeeded``, ``cancelled``
and ``suppressed`` are terminal: no event leaves a terminal status, ever.

The legal moves are declared exactly once, in :data:`TRANSITION_DECLARATION`:
a tuple of typed rows (source statuses, event, destination status, reason
written). Everything else is derived from it at import time:

- :data:`MACHINE`, the ``transitions`` machine, which draws the docs diagram
  and drives :class:`DeliveryLifecycle`;
- :data:`TRANSITION_TABLE`, ``(status, event) -> Transition``, and behind
  :func:`apply_event` a dict of the same moves keyed by plain strings: one
  lookup per transition on the hot path;
- the sets: :data:`LIVE_STATUSES` (a source of some move),
  :data:`TERMINAL_STATUSES` (a source of none) and
  :data:`RESENDABLE_STATUSES` (terminal, entered by a move that did not
  deliver: what ``resend`` may copy).

Firing an event that the declaration does not allow from the current status
raises :class:`~chimeway_core.errors.IllegalTransitionError` and changes
nothing; it is never silently ignored.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Final, Literal

import attrs
from transitions import Machine, MachineError

from chimeway_core.errors import IllegalTransitionError

__all__ = [
    "LIVE_STATUSES",
    "MACHINE",
    "POLICY_REASON",
    "RESENDABLE_STATUSES",
    "TERMINAL_STATUSES",
    "TRANSITION_DECLARATION",
    "TRANSITION_TABLE",
    "DeliveryLifecycle",
    "DeliveryStatus",
    "Event",
    "Reason",
    "Transition",
    "TransitionRow",
    "apply_event",
]


class DeliveryStatus(enum.StrEnum):
    """Where a delivery is. The value is what the database stores."""

    READY = "ready"
    FAILED = "failed"
    SUCCEEDED = "succeeded"
    CANCELLED = "cancelled"
    SUPPRESSED = "suppressed"


class Event(enum.StrEnum):
    """What can happen to a delivery. Each member is one row family of DESIGN.md."""

    SUCCEED = "succeed"
    """The channel accepted the notification."""
    FAIL_TEMPORARY = "fail_temporary"
    """A failure worth retrying (also any failure of an undocumented class)."""
    FAIL_PERMANENT = "fail_permanent"
    """The provider refused for good."""
    BOUNCE = "bounce"
    """The recipient address does not exist or rejects mail."""
    LOSE_OUTCOME_RETRYABLE = "lose_outcome_retryable"
    """Outcome unknown on an at-least-once channel: retried with the same key."""
    LOSE_OUTCOME_FINAL = "lose_outcome_final"
    """Outcome unknown on an at-most-once channel: never sent again."""
    EXHAUST = "exhaust"
    """The last allowed attempt failed temporarily."""
    SUPPRESS = "suppress"
    """A policy decided the delivery must not be sent (reason given by it)."""
    CANCEL = "cancel"
    """The application cancelled the delivery."""


class Reason(enum.StrEnum):
    """The fixed reasons chimeway itself writes. Policies add their own strings."""

    PERMANENT_FAILURE = "permanent_failure"
    BOUNCED = "bounced"
    OUTCOME_UNKNOWN = "outcome_unknown"
    RETRIES_EXHAUSTED = "retries_exhausted"
    CANCELLED = "cancelled"
    OPTED_OUT = "opted_out"
    ALREADY_READ = "already_read"
    EXPIRED = "expired"
    QUIET_HOURS = "quiet_hours"
    RATE_LIMITED = "rate_limited"
    RECIPIENT_RATE_LIMITED = "recipient_rate_limited"
    TOO_MANY_DEFERRALS = "too_many_deferrals"


class _PolicyReason(enum.Enum):
    POLICY_REASON = "policy's reason"

    def __repr__(self) -> str:
        return "POLICY_REASON"


#: A row's reason when the policy that fired the event gives it (``suppress``).
POLICY_REASON: Final = _PolicyReason.POLICY_REASON


@attrs.frozen
class TransitionRow:
    """One row of the declaration: ``event`` moves each of ``sources`` to ``dest``.

    ``reason`` is what entering ``dest`` writes: a fixed :class:`Reason`,
    :data:`POLICY_REASON` when the policy gives it, or ``None`` for none.
    """

    sources: tuple[DeliveryStatus, ...]
    event: Event
    dest: DeliveryStatus
    reason: Reason | Literal[_PolicyReason.POLICY_REASON] | None


_R, _F = DeliveryStatus.READY, DeliveryStatus.FAILED
_S, _C, _X = DeliveryStatus.SUCCEEDED, DeliveryStatus.CANCELLED, DeliveryStatus.SUPPRESSED

#: The one declaration of the state machine, in DESIGN.md's order.
TRANSITION_DECLARATION: Final[tuple[TransitionRow, ...]] = (
    TransitionRow((_R, _F), Event.SUCCEED, _S, None),
    TransitionRow((_R, _F), Event.FAIL_TEMPORARY, _F, None),
    TransitionRow((_R, _F), Event.FAIL_PERMANENT, _C, Reason.PERMANENT_FAILURE),
    TransitionRow((_R, _F), Event.BOUNCE, _C, Reason.BOUNCED),
    TransitionRow((_R, _F), Event.LOSE_OUTCOME_RETRYABLE, _F, None),
    TransitionRow((_R, _F), Event.LOSE_OUTCOME_FINAL, _C, Reason.OUTCOME_UNKNOWN),
    TransitionRow((_F,), Event.EXHAUST, _C, Reason.RETRIES_EXHAUSTED),
    TransitionRow((_R, _F), Event.SUPPRESS, _X, POLICY_REASON),
    TransitionRow((_R, _F), Event.CANCEL, _C, Reason.CANCELLED),
)

#: Statuses some event leaves: where a delivery is still on its way.
LIVE_STATUSES: Final = frozenset(s for row in TRANSITION_DECLARATION for s in row.sources)

#: Statuses no event can leave.
TERMINAL_STATUSES: Final = frozenset(DeliveryStatus) - LIVE_STATUSES

#: Terminal statuses entered without delivering: what ``resend`` may copy.
RESENDABLE_STATUSES: Final = frozenset(
    row.dest
    for row in TRANSITION_DECLARATION
    if row.dest in TERMINAL_STATUSES and row.event is not Event.SUCCEED
)

#: The ``transitions`` machine built from :data:`TRANSITION_DECLARATION`.
MACHINE: Final = Machine(
    model=None,
    states=[status.value for status in DeliveryStatus],
    transitions=[
        {
            "trigger": row.event.value,
            "source": [source.value for source in row.sources],
            "dest": row.dest.value,
        }
        for row in TRANSITION_DECLARATION
    ],
    initial=None,
    auto_transitions=False,
    ignore_invalid_triggers=False,
)


@attrs.frozen
class Transition:
    """One legal move: the status entered and the fixed reason written, if any."""

    source: DeliveryStatus
    event: Event
    dest: DeliveryStatus
    reason: Reason | None


def _compile() -> Mapping[tuple[DeliveryStatus, Event], Transition]:
    table: dict[tuple[DeliveryStatus, Event], Transition] = {}
    for row in TRANSITION_DECLARATION:
        reason = None if row.reason is POLICY_REASON else row.reason
        for source in row.sources:
            table[source, row.event] = Transition(source, row.event, row.dest, reason)
    return MappingProxyType(table)


#: ``(status, event) -> Transition`` for every legal move, in declaration order.
TRANSITION_TABLE: Final = _compile()

# The hot path keys on the plain string values: Enum.__hash__ is a Python-level
# call, a str's hash is cached in C.
_FAST_TABLE: Final = {(s.value, e.value): move for (s, e), move in TRANSITION_TABLE.items()}


def apply_event(status: DeliveryStatus, event: Event) -> Transition:
    """Return the move ``event`` makes from ``status``.

    Raises :class:`IllegalTransitionError` when the declaration has no such
    move (in particular from every terminal status), and :class:`TypeError`
    when ``status`` or ``event`` is not the enum itself: strings are never
    coerced.
    """
    if type(status) is not DeliveryStatus:
        raise TypeError(f"status must be a DeliveryStatus, not {type(status).__name__}")
    if type(event) is not Event:
        raise TypeError(f"event must be an Event, not {type(event).__name__}")
    try:
        return _FAST_TABLE[status._value_, event._value_]
    except KeyError:
        raise IllegalTransitionError(status, event) from None


class DeliveryLifecycle:
    """A stateful walk through :data:`MACHINE`, driven by ``transitions`` itself.

    Useful to check a sequence of events against the declaration (the property
    tests do) without a database. The hot path uses :func:`apply_event`.
    """

    state: str
    trigger: Callable[[str], bool]  # bound by ``transitions`` in add_model

    def __init__(self, status: DeliveryStatus = DeliveryStatus.READY) -> None:
        MACHINE.add_model(self, initial=status.value)
        self.reason: str | None = None

    @property
    def status(self) -> DeliveryStatus:
        """The current status."""
        return DeliveryStatus(self.state)

    def fire(self, event: Event, reason: str | None = None) -> DeliveryStatus:
        """Fire ``event`` through ``transitions``; raise if it is illegal here.

        On an illegal event nothing changes and
        :class:`IllegalTransitionError` is raised. ``reason`` is used when the
        declaration leaves it to the caller (``suppress``).
        """
        before = self.status
        try:
            self.trigger(event.value)
        except MachineError:
            raise IllegalTransitionError(before, event) from None
        fixed = TRANSITION_TABLE[before, event].reason
        if fixed is not None:
            self.reason = fixed.value
        elif self.status in TERMINAL_STATUSES:
            self.reason = reason
        return self.status

    def close(self) -> None:
        """Detach from the shared machine so the object can be collected."""
        MACHINE.remove_model(self)
