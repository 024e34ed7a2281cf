"""What a channel call produced, and how chimeway classifies it.

A channel returns one of four frozen values — :class:`Sent`,
:class:`TemporaryFailure`, :class:`PermanentFailure`, :class:`Bounced` — or
raises. :func:`classify` turns *anything* a channel returned or raised into a
:class:`Classification`: an :class:`Outcome`, an error class, the provider's
response and an optional ``retry_after``.

Classification never crashes. A return value of a shape nobody documented gets
the error class :data:`UNKNOWN_CLASSIFICATION`, which lies outside
:class:`ErrorClass` on purpose: the dispatch table's catch-all handles it
(converge on the final attempt, otherwise raise loudly), exactly like the
reference worker's BL-02 branch. Only the *type name* of such a value is kept,
never its ``repr``, so an unexpected value cannot smuggle a payload or a secret
into the ledger.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, TypeAlias

import attrs

from chimeway_core._checks import seconds
from chimeway_core.errors import OutcomeUnknownError

__all__ = [
    "UNKNOWN_CLASSIFICATION",
    "Bounced",
    "ChannelResult",
    "Classification",
    "ErrorClass",
    "Outcome",
    "PermanentFailure",
    "Sent",
    "TemporaryFailure",
    "classify",
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
