"""What a channel call produced, and how chimeway classifies it.

A channel returns one of four frozen values — :class:`Sent`,
:class:`TemporaryFailure`, :class:`PermanentFailure`, :class:`Bounced` — or
raises. :func:`classify` turns *anything* a channel returned or raised into a
:class:`Classification`: an :class:`Outcome`, an error class, the provider's
response and an optional ``retry_after``.

Building one of the four values checks it, inside the channel's own call: a
``message`` that is not a ``str``, a ``provider_response`` that is not a
mapping or a ``retry_after`` that is not a number raises :class:`TypeError`; a
negative or non-finite ``retry_after`` raises :class:`ValueError`.

Classification never crashes. A return value of a shape nobody documented gets
the error class :data:`UNKNOWN_CLASSIFICATION`, which lies outside
:class:`ErrorClass` on purpose: the dispatch table's catch-all handles it
(converge on the final attempt, otherwise raise loudly), exactly like the
reference worker's BL-02 branch. Only the *type name* of such a value is kept,
never its ``repr``, so an unexpected value cannot smuggle a payload or a secret
into the ledger.

Recording an attempt fires one state-machine event, chosen by the data literal
:data:`OUTCOME_EVENTS` (outcome, error class, the channel's guarantee ->
event): the first row that matches wins, and the last rows catch every shape
the others leave, so :func:`attempt_event` is one dict lookup. The generated
page ``docs/dispatch-table.md`` shows the rows.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, Literal, TypeAlias

import attrs

from chimeway_core._checks import seconds
from chimeway_core.errors import OutcomeUnknownError
from chimeway_core.states import Event

__all__ = [
    "ANY",
    "OTHER_CLASSES",
    "OUTCOME_EVENTS",
    "UNKNOWN_CLASSIFICATION",
    "Bounced",
    "ChannelResult",
    "Classification",
    "ErrorClass",
    "Outcome",
    "PermanentFailure",
    "Sent",
    "OutcomeRow",
    "TemporaryFailure",
    "attempt_event",
    "classify",
    "error_class_key",
]


class Outcome(enum.StrEnum):
    """How an attempt ended, as far as chimeway can know."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNKNOWN = "unknown"
    """The request may have reached the provider; its answer was lost."""


class ErrorClass(enum.StrEnum):
    """The documented kinds of failure."""

    TEMPORARY = "temporary"
    PERMANENT = "permanent"
    BOUNCED = "bounced"


#: The error class of a channel return value whose shape nobody documented.
UNKNOWN_CLASSIFICATION: Final = "unknown_classification"

_EMPTY: Final[Mapping[str, object]] = MappingProxyType({})


def _frozen_mapping(value: Mapping[str, object] | None) -> Mapping[str, object]:
    if value is None:
        return _EMPTY
    if not isinstance(value, Mapping):
        raise TypeError(f"provider_response must be a mapping, not {type(value).__name__}")
    return MappingProxyType(dict(value))


def _check_retry_after(_: object, __: attrs.Attribute[float | None], value: float | None) -> None:
    if value is not None:
        seconds("retry_after", value)


def _check_message(_: object, __: attrs.Attribute[str], value: str) -> None:
    # Checked when the channel builds the value, inside send(): a wrong one is
    # then that call's own failure, never a crash while recording the attempt.
    if not isinstance(value, str):
        raise TypeError(f"message must be a str, not {type(value).__name__}")


@attrs.frozen
class Sent:
    """The provider accepted the notification."""

    provider_response: Mapping[str, object] = attrs.field(
        default=None, converter=_frozen_mapping, kw_only=True
    )


@attrs.frozen
class TemporaryFailure:
    """A failure worth retrying; ``retry_after`` is the provider's hint in seconds."""

    message: str = attrs.field(default="", validator=_check_message)
    retry_after: float | None = attrs.field(default=None, validator=_check_retry_after)
    provider_response: Mapping[str, object] = attrs.field(
        default=None, converter=_frozen_mapping, kw_only=True
    )


@attrs.frozen
class PermanentFailure:
    """The provider refused the notification for good; retrying cannot help."""

    message: str = attrs.field(default="", validator=_check_message)
    provider_response: Mapping[str, object] = attrs.field(
        default=None, converter=_frozen_mapping, kw_only=True
    )


@attrs.frozen
class Bounced:
    """The recipient address does not exist or rejects everything."""

    message: str = attrs.field(default="", validator=_check_message)
    provider_response: Mapping[str, object] = attrs.field(
        default=None, converter=_frozen_mapping, kw_only=True
    )


#: What a channel's ``send`` is documented to return.
ChannelResult: TypeAlias = Sent | TemporaryFailure | PermanentFailure | Bounced


@attrs.frozen
class Classification:
    """The shape of one attempt, as recorded in the ledger and fed to ``decide()``.

    ``error_class`` is an :class:`ErrorClass`, ``None`` (success or unknown
    outcome) or :data:`UNKNOWN_CLASSIFICATION`.
    """

    outcome: Outcome
    error_class: ErrorClass | str | None
    provider_response: Mapping[str, object] = attrs.field(factory=dict)
    retry_after: float | None = None
    error: str | None = None
    """A short, safe description of the failure (exception type and message)."""


def classify(
    result: object, *, exception_class: ErrorClass = ErrorClass.TEMPORARY
) -> Classification:
    """Classify whatever a channel returned, or the exception it raised.

    - :class:`Sent` → ``succeeded``; the three failure values → ``failed`` with
      their error class.
    - :class:`~chimeway_core.errors.OutcomeUnknownError` (the request left but
      the answer was lost) → ``unknown``.
    - Any other exception → ``failed`` with ``exception_class`` (temporary unless
      the channel says otherwise).
    - Any other value → ``failed`` / :data:`UNKNOWN_CLASSIFICATION`.
    """
    match result:
        case Sent(provider_response=response):
            return Classification(Outcome.SUCCEEDED, None, response)
        case TemporaryFailure(message=message, retry_after=retry_after, provider_response=response):
            return Classification(
                Outcome.FAILED, ErrorClass.TEMPORARY, response, retry_after, message or None
            )
        case PermanentFailure(message=message, provider_response=response):
            return Classification(
                Outcome.FAILED, ErrorClass.PERMANENT, response, None, message or None
            )
        case Bounced(message=message, provider_response=response):
            return Classification(
                Outcome.FAILED, ErrorClass.BOUNCED, response, None, message or None
            )
        case OutcomeUnknownError():
            return Classification(Outcome.UNKNOWN, None, _EMPTY, None, str(result))
        case BaseException():
            return Classification(
                Outcome.FAILED, exception_class, _EMPTY, None, _describe_exception(result)
            )
        case _:
            return Classification(
                Outcome.FAILED,
                UNKNOWN_CLASSIFICATION,
                {"unexpected_type": type(result).__qualname__},
                None,
                f"channel returned an unexpected {type(result).__qualname__}",
            )


def _describe_exception(error: BaseException) -> str:
    # Exception messages can echo a request (and so a recipient). Keep the
    # type always; the message is kept because it is the operator's main clue,
    # and the ledger truncates it.
    text = str(error)
    name = type(error).__qualname__
    return f"{name}: {text}" if text else name


# -- From outcome to event ----------------------------------------------------


class _Any(enum.Enum):
    ANY = "any"

    def __repr__(self) -> str:
        return "ANY"


#: Wildcard for a column of a rule row (here and in the dispatch table).
ANY: Final = _Any.ANY

#: The key every error class outside :class:`ErrorClass` and ``None`` shares in
#: the rule tables (:data:`UNKNOWN_CLASSIFICATION` included). A string, so it
#: hashes in C like the members it sits beside.
OTHER_CLASSES: Final = "<other>"

#: What :func:`error_class_key` returns.
ErrorClassKey: TypeAlias = ErrorClass | Literal["<other>"] | None

_CLASS_BY_VALUE: Final[Mapping[str, ErrorClass]] = {c.value: c for c in ErrorClass}


def error_class_key(error_class: object) -> ErrorClassKey:
    """The rule tables' key for ``error_class``: the member, ``None``, or :data:`OTHER_CLASSES`.

    A plain string equal to a member's value (as read back from the database)
    counts as that member; any other value, of any type, is undocumented.
    """
    if error_class is None or type(error_class) is ErrorClass:
        return error_class
    if isinstance(error_class, str):
        return _CLASS_BY_VALUE.get(str.__str__(error_class), OTHER_CLASSES)
    return OTHER_CLASSES


@attrs.frozen
class OutcomeRow:
    """One row of :data:`OUTCOME_EVENTS`: recording this shape fires ``event``.

    ``retry_unknown`` is the channel's guarantee: ``True`` when it honours
    idempotency keys (at-least-once), ``False`` when it does not (at-most-once).
    """

    name: str
    outcome: Outcome
    error_classes: frozenset[ErrorClassKey] | _Any
    retry_unknown: bool | _Any
    event: Event
    why: str


#: Outcome -> event, in priority order; the first matching row wins.
OUTCOME_EVENTS: Final[tuple[OutcomeRow, ...]] = (
    OutcomeRow("sent", Outcome.SUCCEEDED, ANY, ANY, Event.SUCCEED, "The provider accepted it."),
    OutcomeRow(
        "temporary",
        Outcome.FAILED,
        frozenset({ErrorClass.TEMPORARY}),
        ANY,
        Event.FAIL_TEMPORARY,
        "Worth retrying: the delivery waits in failed.",
    ),
    OutcomeRow(
        "permanent",
        Outcome.FAILED,
        frozenset({ErrorClass.PERMANENT}),
        ANY,
        Event.FAIL_PERMANENT,
        "The provider refused for good.",
    ),
    OutcomeRow(
        "bounced",
        Outcome.FAILED,
        frozenset({ErrorClass.BOUNCED}),
        ANY,
        Event.BOUNCE,
        "The address does not exist or rejects everything.",
    ),
    OutcomeRow(
        "undocumented",
        Outcome.FAILED,
        frozenset({None, OTHER_CLASSES}),
        ANY,
        Event.FAIL_TEMPORARY,
        "A failure of a class nobody documented stays live in failed;"
        " the dispatch table's catch-all then decides.",
    ),
    OutcomeRow(
        "unknown_at_least_once",
        Outcome.UNKNOWN,
        ANY,
        True,
        Event.LOSE_OUTCOME_RETRYABLE,
        "The answer was lost; the channel honours idempotency keys, so it is retried"
        " with the same key.",
    ),
    OutcomeRow(
        "unknown_at_most_once",
        Outcome.UNKNOWN,
        ANY,
        False,
        Event.LOSE_OUTCOME_FINAL,
        "The answer was lost; the channel cannot dedupe, so it is never sent again.",
    ),
)

_ERROR_CLASS_KEYS: Final[tuple[ErrorClassKey, ...]] = (*ErrorClass, None, OTHER_CLASSES)


def _outcome_row(outcome: Outcome, key: ErrorClassKey, retry_unknown: bool) -> OutcomeRow:
    return next(
        row
        for row in OUTCOME_EVENTS
        if row.outcome is outcome
        and (row.error_classes is ANY or key in row.error_classes)
        and (row.retry_unknown is ANY or row.retry_unknown is retry_unknown)
    )


# Every shape, precompiled; building it fails at import if a shape has no row.
# A plain dict, not a mapping proxy: the proxy costs a second lookup per call.
_EVENTS: Final[dict[tuple[Outcome, ErrorClassKey, bool], Event]] = {
    (outcome, key, retry_unknown): _outcome_row(outcome, key, retry_unknown).event
    for outcome in Outcome
    for key in _ERROR_CLASS_KEYS
    for retry_unknown in (True, False)
}


def attempt_event(outcome: Outcome, error_class: object, *, retry_unknown: bool) -> Event:
    """The state-machine event that recording an attempt of this shape fires.

    Looked up in :data:`OUTCOME_EVENTS`: a failure of an undocumented error
    class fires ``fail_temporary`` (the delivery stays live in ``failed`` and
    the dispatch table's catch-all then decides); an unknown outcome is
    retryable when the channel honours idempotency keys (``retry_unknown``),
    final otherwise. Raises :class:`TypeError` when ``outcome`` is not an
    :class:`Outcome`.
    """
    if not isinstance(outcome, Outcome):
        raise TypeError(f"outcome must be an Outcome, not {type(outcome).__name__}")
    return _EVENTS[outcome, error_class_key(error_class), bool(retry_unknown)]
