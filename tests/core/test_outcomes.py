"""Channel results and their classification."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime
from types import MappingProxyType

import pytest
from hypothesis import given

from chimeway_core import (
    UNKNOWN_CLASSIFICATION,
    Bounced,
    DeliveryStatus,
    ErrorClass,
    Outcome,
    OutcomeUnknownError,
    PermanentFailure,
    Sent,
    TemporaryFailure,
    UnhandledOutcomeError,
    classify,
)
from chimeway_core.testing import strategies


@pytest.mark.parametrize(
    ("result", "outcome", "error_class"),
    [
        (Sent(), Outcome.SUCCEEDED, None),
        (TemporaryFailure("busy", 3.0), Outcome.FAILED, ErrorClass.TEMPORARY),
        (PermanentFailure("no"), Outcome.FAILED, ErrorClass.PERMANENT),
        (Bounced("gone"), Outcome.FAILED, ErrorClass.BOUNCED),
        (OutcomeUnknownError("read timeout"), Outcome.UNKNOWN, None),
        (RuntimeError("boom"), Outcome.FAILED, ErrorClass.TEMPORARY),
        (None, Outcome.FAILED, UNKNOWN_CLASSIFICATION),
        ("ok", Outcome.FAILED, UNKNOWN_CLASSIFICATION),
    ],
)
def test_classify_shapes(result: object, outcome: Outcome, error_class: object) -> None:
    """Each documented shape and each fallback classifies as documented."""
    shape = classify(result)
    assert (outcome, error_class) == (shape.outcome, shape.error_class)


def test_exception_class_is_configurable() -> None:
    """A channel can declare that its exceptions are permanent failures."""
    shape = classify(ValueError("bad template"), exception_class=ErrorClass.PERMANENT)
    assert ErrorClass.PERMANENT == shape.error_class
    assert "ValueError: bad template" == shape.error


def test_retry_after_is_carried() -> None:
    """A temporary failure's retry_after reaches the classification."""
    assert 12.5 == classify(TemporaryFailure(retry_after=12.5)).retry_after


def test_unexpected_value_keeps_only_its_type_name() -> None:
    """An unexpected return keeps its type name, never its repr (it may hold secrets)."""
    shape = classify({"token": "canary-secret-1234"})
    assert {"unexpected_type": "dict"} == dict(shape.provider_response)
    assert "canary-secret-1234" not in repr(shape)


def test_provider_response_is_frozen() -> None:
    """A result's provider_response is a read-only copy of what the channel gave."""
    source = {"id": "m-1"}
    sent = Sent(provider_response=source)
    source["id"] = "changed"
    assert isinstance(sent.provider_response, MappingProxyType)
    assert "m-1" == sent.provider_response["id"]


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_retry_after_is_validated(bad: float) -> None:
    """A negative or non-finite retry_after is refused at construction."""
    with pytest.raises(ValueError, match="retry_after"):
        TemporaryFailure(retry_after=bad)


@pytest.mark.parametrize("bad", ["5", True, None])
def test_retry_after_of_the_wrong_kind_is_a_type_error(bad: object) -> None:
    """retry_after is a number of seconds or None; a str or a bool is named."""
    if bad is None:
        assert TemporaryFailure(retry_after=None).retry_after is None
        return
    with pytest.raises(TypeError, match="retry_after must be a number of seconds"):
        TemporaryFailure(retry_after=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", [TemporaryFailure, PermanentFailure, Bounced])
@pytest.mark.parametrize("bad", [123, b"busy", None])
def test_a_failure_message_must_be_a_str(kind: type[object], bad: object) -> None:
    """A message of another kind is refused when the value is built (inside send())."""
    with pytest.raises(TypeError, match="message must be a str"):
        kind(bad)  # type: ignore[call-arg]


def test_provider_response_must_be_a_mapping() -> None:
    """A provider_response that is not a mapping is a TypeError."""
    with pytest.raises(TypeError, match="provider_response must be a mapping"):
        Sent(provider_response=["x"])  # type: ignore[arg-type]


@given(result=strategies.channel_results)
def test_classify_never_crashes(result: object) -> None:
    """Whatever a channel returns or raises classifies to an Outcome."""
    assert isinstance(classify(result).outcome, Outcome)


def test_unhandled_outcome_error_carries_its_fields_and_pickles() -> None:
    """UnhandledOutcomeError keeps every field, the next run's too, through pickling."""
    run_at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    error = UnhandledOutcomeError(
        delivery_id=None,
        outcome=Outcome.FAILED,
        error_class="weird",
        status=DeliveryStatus.FAILED,
        attempt=2,
        max_attempts=5,
        run_at=run_at,
        queue="sms",
    )
    clone = pickle.loads(pickle.dumps(error))
    assert str(error) == str(clone)
    assert (None, Outcome.FAILED, "weird", DeliveryStatus.FAILED, 2, 5, run_at, "sms") == (
        clone.delivery_id,
        clone.outcome,
        clone.error_class,
        clone.status,
        clone.attempt,
        clone.max_attempts,
        clone.run_at,
        clone.queue,
    )
