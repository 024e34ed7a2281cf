"""The dispatch table: from the shape of a recorded attempt to what the job does.

Theory of operation
-------------------
After an attempt is recorded (and the delivery's status moved accordingly),
the worker must tell its queue what to do. :func:`decide` answers with one
:class:`Action`:

``ACK``
    The job is finished; return normally.
``RETRY``
    Schedule the next attempt after the retry policy's delay.
``EXHAUST``
    Write ``cancelled`` / ``retries_exhausted``, then acknowledge, so the queue
    job completes cleanly while the ledger keeps the durable explanation.
``RAISE``
    The shape is not covered by any documented row and cannot converge:
    raise :class:`~chimeway_core.errors.UnhandledOutcomeError`.

The documented rows are the data literal :data:`DISPATCH_ROWS`; the first row
that matches wins. Every shape no row matches falls to the catch-all of the
reference worker: on the final attempt (``attempt >= max_attempts``) with the
delivery in ``failed`` it converges (``EXHAUST``), otherwise ``RAISE``.

The rows are compiled at import time into a dict over the whole finite space
(outcome x error-class key x status x "final attempt?"), so :func:`decide`
costs argument checks plus one dict lookup. Error classes that are not
documented — any string, ``None``, any object — share one key, ``<other>``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

import attrs

from chimeway_core.outcomes import ErrorClass, Outcome
from chimeway_core.states import DeliveryStatus, Event

__all__ = [
    "ANY",
    "CATCH_ALL",
    "DISPATCH_ROWS",
    "Action",
    "AttemptRelation",
    "DispatchRow",
    "attempt_event",
    "decide",
    "match_row",
]


class Action(enum.StrEnum):
    """What the queue job does after an attempt was recorded."""

    ACK = "ack"
    RETRY = "retry"
    EXHAUST = "exhaust"
    RAISE = "raise"


class AttemptRelation(enum.StrEnum):
    """Where the attempt number stands relative to ``max_attempts``."""

    ANY = "any"
    BELOW_MAX = "attempt < max_attempts"
    FINAL = "attempt >= max_attempts"


class _Any(enum.Enum):
    ANY = "any"

    def __repr__(self) -> str:
        return "ANY"


#: Wildcard for a row's error classes.
ANY: Final = _Any.ANY


@attrs.frozen
class DispatchRow:
    """One documented row of the dispatch table."""

    name: str
    outcome: Outcome
    error_classes: frozenset[ErrorClass | None] | _Any
    status: DeliveryStatus | _Any
    attempt: AttemptRelation
    action: Action
    why: str


#: The documented rows, in priority order. Matching is on the shape *after*
#: the attempt was recorded: ``status`` is the delivery's new status.
DISPATCH_ROWS: Final[tuple[DispatchRow, ...]] = (
    DispatchRow(
        "succeeded",
        Outcome.SUCCEEDED,
        ANY,
        ANY,
        AttemptRelation.ANY,
        Action.ACK,
        "The channel accepted the notification.",
    ),
    DispatchRow(
        "permanent_or_bounced",
        Outcome.FAILED,
        frozenset({ErrorClass.PERMANENT, ErrorClass.BOUNCED}),
        DeliveryStatus.CANCELLED,
        AttemptRelation.ANY,
        Action.ACK,
        "Recording already wrote cancelled with permanent_failure or bounced.",
    ),
    DispatchRow(
        "temporary_retry",
        Outcome.FAILED,
        frozenset({ErrorClass.TEMPORARY}),
        DeliveryStatus.FAILED,
        AttemptRelation.BELOW_MAX,
        Action.RETRY,
        "Retries remain: schedule the next attempt after the backoff delay.",
    ),
    DispatchRow(
        "temporary_exhausted",
        Outcome.FAILED,
        frozenset({ErrorClass.TEMPORARY}),
        DeliveryStatus.FAILED,
        AttemptRelation.FINAL,
        Action.EXHAUST,
        "The final attempt failed: write cancelled/retries_exhausted, then ack.",
    ),
    DispatchRow(
        "unknown_retry",
        Outcome.UNKNOWN,
        ANY,
        DeliveryStatus.FAILED,
        AttemptRelation.BELOW_MAX,
        Action.RETRY,
        "At-least-once channel lost the answer: retry with the same idempotency key.",
    ),
    DispatchRow(
        "unknown_exhausted",
        Outcome.UNKNOWN,
        ANY,
        DeliveryStatus.FAILED,
        AttemptRelation.FINAL,
        Action.EXHAUST,
        "At-least-once channel lost the answer on the final attempt.",
    ),
    DispatchRow(
        "unknown_at_most_once",
        Outcome.UNKNOWN,
        ANY,
        DeliveryStatus.CANCELLED,
        AttemptRelation.ANY,
        Action.ACK,
        "At-most-once channel lost the answer: recording wrote cancelled/outcome_unknown.",
    ),
)

#: The name under which the catch-all shows in the generated docs and telemetry.
CATCH_ALL: Final = "catch_all"

_OTHER: Final = "<other>"
_ERROR_CLASS_KEYS: Final[tuple[ErrorClass | str | None, ...]] = (*ErrorClass, None, _OTHER)
_CLASS_BY_VALUE: Final[Mapping[str, ErrorClass]] = {c.value: c for c in ErrorClass}

_Key = tuple[Outcome, ErrorClass | str | None, DeliveryStatus, bool]


def _row_matches(
    row: DispatchRow,
    outcome: Outcome,
    error_class_key: ErrorClass | str | None,
    status: DeliveryStatus,
    final: bool,
) -> bool:
    if row.outcome is not outcome:
        return False
    if row.error_classes is not ANY and error_class_key not in row.error_classes:
        return False
    if row.status is not ANY and row.status is not status:
        return False
    if row.attempt is AttemptRelation.BELOW_MAX:
        return not final
    if row.attempt is AttemptRelation.FINAL:
        return final
    return True


def _error_class_key(error_class: object) -> ErrorClass | str | None:
    if error_class is None or type(error_class) is ErrorClass:
        return error_class
    if isinstance(error_class, str):
        # A str equal to a member (as read back from the database) counts.
        return _CLASS_BY_VALUE.get(str.__str__(error_class), _OTHER)
    return _OTHER


def _compile() -> dict[_Key, tuple[Action, str]]:
    table: dict[_Key, tuple[Action, str]] = {}
    for outcome in Outcome:
        for key in _ERROR_CLASS_KEYS:
            for status in DeliveryStatus:
                for final in (False, True):
                    row = next(
                        (r for r in DISPATCH_ROWS if _row_matches(r, outcome, key, status, final)),
                        None,
                    )
                    if row is not None:
                        table[outcome, key, status, final] = (row.action, row.name)
                    elif final and status is DeliveryStatus.FAILED:
                        table[outcome, key, status, final] = (Action.EXHAUST, CATCH_ALL)
                    else:
                        table[outcome, key, status, final] = (Action.RAISE, CATCH_ALL)
    return table


# Keyed by the enum members themselves: StrEnum members hash as their (cached)
# str value, so the key of the common shape is the arguments as they came.
# A plain dict, not a mapping proxy: the proxy costs a second lookup per call.
_TABLE: Final = _compile()


def _check(outcome: object, status: object, attempt: object, max_attempts: object) -> None:
    # Enums with members cannot be subclassed, so exact type checks are
    # isinstance checks, only cheaper.
    if type(outcome) is not Outcome:
        raise TypeError(f"outcome must be an Outcome, not {type(outcome).__name__}")
    if type(status) is not DeliveryStatus:
        raise TypeError(f"status must be a DeliveryStatus, not {type(status).__name__}")
    if type(attempt) is not int:
        raise TypeError(f"attempt must be an int, not {type(attempt).__name__}")
    if type(max_attempts) is not int:
        raise TypeError(f"max_attempts must be an int, not {type(max_attempts).__name__}")
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")


def match_row(
    outcome: Outcome,
    error_class: object,
    status: DeliveryStatus,
    attempt: int,
    max_attempts: int,
) -> tuple[Action, str]:
    """Like :func:`decide`, and also name the row that fired (or ``catch_all``)."""
    _check(outcome, status, attempt, max_attempts)
    return _TABLE[outcome, _error_class_key(error_class), status, attempt >= max_attempts]


def decide(
    outcome: Outcome,
    error_class: object,
    status: DeliveryStatus,
    attempt: int,
    max_attempts: int,
) -> Action:
    """Map the shape of a recorded attempt to the :class:`Action` its job takes.

    ``status`` is the delivery's status *after* the attempt was recorded;
    ``error_class`` may be any value, documented or not. Raises
    :class:`TypeError` when ``outcome`` or ``status`` is not the enum itself
    (strings are never coerced) and :class:`ValueError` naming the argument
    when ``attempt`` or ``max_attempts`` is below 1. It never raises for an
    unknown shape: it returns :attr:`Action.RAISE` and the caller raises.
    """
    # One condition, then one lookup keyed by the arguments: this is the hot
    # path of every attempt. Everything else takes the checked way below.
    if (
        type(outcome) is Outcome
        and type(status) is DeliveryStatus
        and type(attempt) is int
        and type(max_attempts) is int
        and attempt >= 1
        and max_attempts >= 1
    ):
        if error_class is None or type(error_class) is ErrorClass:
            return _TABLE[outcome, error_class, status, attempt >= max_attempts][0]
        if type(error_class) is str:
            # A documented class read back from the database equals its member;
            # any other string is undocumented.
            final = attempt >= max_attempts
            row = _TABLE.get((outcome, error_class, status, final))
            return (row or _TABLE[outcome, _OTHER, status, final])[0]
    return match_row(outcome, error_class, status, attempt, max_attempts)[0]


_FAILURE_EVENTS: Final[Mapping[ErrorClass, Event]] = MappingProxyType(
    {
        ErrorClass.TEMPORARY: Event.FAIL_TEMPORARY,
        ErrorClass.PERMANENT: Event.FAIL_PERMANENT,
        ErrorClass.BOUNCED: Event.BOUNCE,
    }
)


def attempt_event(outcome: Outcome, error_class: object, *, retry_unknown: bool) -> Event:
    """The state-machine event that recording an attempt of this shape fires.

    A failure of an undocumented error class fires ``fail_temporary``: the
    delivery stays live in ``failed`` and the dispatch table's catch-all then
    decides (converge on the final attempt, raise otherwise). An unknown
    outcome is retryable when the channel honours idempotency keys
    (``retry_unknown``), final otherwise.
    """
    if not isinstance(outcome, Outcome):
        raise TypeError(f"outcome must be an Outcome, not {type(outcome).__name__}")
    if outcome is Outcome.SUCCEEDED:
        return Event.SUCCEED
    if outcome is Outcome.UNKNOWN:
        return Event.LOSE_OUTCOME_RETRYABLE if retry_unknown else Event.LOSE_OUTCOME_FINAL
    key = _error_class_key(error_class)
    if isinstance(key, ErrorClass):
        return _FAILURE_EVENTS[key]
    return Event.FAIL_TEMPORARY
