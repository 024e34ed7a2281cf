"""The delivery state machine.

Theory of operation
-------------------
A delivery has one of five statuses. ``ready`` is where it starts, ``failed``
is where it waits after a temporary failure, and ``succeeded``, ``cancelled``
and ``suppressed`` are terminal: no event leaves a terminal status, ever.

The legal moves are declared exactly once, in :data:`TRANSITION_DECLARATION`,
in the format of the ``transitions`` package. :data:`MACHINE` is built from that
declaration and is what the documentation diagram is drawn from.
:data:`TRANSITION_TABLE` is compiled from the very same machine at import time
and is what the hot path uses: a single dict lookup per transition.

Firing an event that the declaration does not allow from the current status
raises :class:`~chimeway_core.errors.IllegalTransitionError` and changes
nothing; it is never silently ignored.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Final

import attrs
from transitions import Machine, MachineError

from chimeway_core.errors import IllegalTransitionError

__all__ = [
    "MACHINE",
    "TERMINAL_STATUSES",
    "TRANSITION_DECLARATION",
    "TRANSITION_TABLE",
    "DeliveryLifecycle",
    "DeliveryStatus",
    "Event",
    "Reason",
    "Transition",
    "apply_event",
]


class DeliveryStatus(enum.StrEnum):
    """Where a delivery is. The value is what the database stores."""

    READY = "ready"
    FAILED = "failed"
    SUCCEEDED = "succeeded"
    CANCELLED = "cancelled"
    SUPPRESSED = "suppressed"


#: Statuses no event can leave.
TERMINAL_STATUSES: Final = frozenset(
    {DeliveryStatus.SUCCEEDED, DeliveryStatus.CANCELLED, DeliveryStatus.SUPPRESSED}
)


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
    TOO_MANY_DEFERRALS = "too_many_deferrals"


_LIVE = [DeliveryStatus.READY.value, DeliveryStatus.FAILED.value]

#: The one declaration of the state machine, in ``transitions`` format. The
#: ``reason`` key is chimeway's own: the reason written on entering ``dest``
#: (``None`` where the caller supplies it, as a policy does for ``suppress``).
TRANSITION_DECLARATION: Final[tuple[Mapping[str, object], ...]] = (
    {"trigger": Event.SUCCEED, "source": _LIVE, "dest": "succeeded", "reason": None},
    {"trigger": Event.FAIL_TEMPORARY, "source": _LIVE, "dest": "failed", "reason": None},
    {
        "trigger": Event.FAIL_PERMANENT,
        "source": _LIVE,
        "dest": "cancelled",
        "reason": Reason.PERMANENT_FAILURE,
    },
    {"trigger": Event.BOUNCE, "source": _LIVE, "dest": "cancelled", "reason": Reason.BOUNCED},
    {"trigger": Event.LOSE_OUTCOME_RETRYABLE, "source": _LIVE, "dest": "failed", "reason": None},
    {
        "trigger": Event.LOSE_OUTCOME_FINAL,
        "source": _LIVE,
        "dest": "cancelled",
        "reason": Reason.OUTCOME_UNKNOWN,
    },
    {
        "trigger": Event.EXHAUST,
        "source": [DeliveryStatus.FAILED.value],
        "dest": "cancelled",
        "reason": Reason.RETRIES_EXHAUSTED,
    },
    {"trigger": Event.SUPPRESS, "source": _LIVE, "dest": "suppressed", "reason": None},
    {"trigger": Event.CANCEL, "source": _LIVE, "dest": "cancelled", "reason": Reason.CANCELLED},
)

#: The ``transitions`` machine built from :data:`TRANSITION_DECLARATION`.
MACHINE: Final = Machine(
    model=None,
    states=[status.value for status in DeliveryStatus],
    transitions=[
        {"trigger": str(row["trigger"]), "source": row["source"], "dest": row["dest"]}
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
    reasons = {Event(str(row["trigger"])): row["reason"] for row in TRANSITION_DECLARATION}
    table: dict[tuple[DeliveryStatus, Event], Transition] = {}
    for name, machine_event in MACHINE.events.items():
        event = Event(name)
        for source, moves in machine_event.transitions.items():
            (move,) = moves  # the declaration is deterministic: one move per source
            reason = reasons[event]
            table[DeliveryStatus(source), event] = Transition(
                source=DeliveryStatus(source),
                event=event,
                dest=DeliveryStatus(str(move.dest)),
                reason=Reason(str(reason)) if reason is not None else None,
            )
    return MappingProxyType(table)


#: ``(status, event) -> Transition`` for every legal move, compiled from :data:`MACHINE`.
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
