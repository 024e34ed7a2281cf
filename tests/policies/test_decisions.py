"""Decisions, the simple built-in policies, evaluate_policies and the deferral bound."""

from __future__ import annotations

import pickle
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta

import attrs
import pytest

from chimeway_core.errors import ChimewayError, PolicyError
from chimeway_core.policies import (
    MAX_DEFERRALS,
    Defer,
    ExpiryPolicy,
    Policy,
    PolicyContext,
    PolicyDecision,
    PolicyPhase,
    PreferencePolicy,
    Proceed,
    QuietHoursPolicy,
    RateLimitPolicy,
    ReadStatePolicy,
    Suppress,
    apply_deferral_bound,
    evaluate_policies,
)
from chimeway_core.records import Delivery
from chimeway_core.states import Reason
from tests.policies.helpers import T0, make_context, make_delivery, no_attempts


@attrs.frozen
class Fixed:
    """A policy that always returns the same decision."""

    decision: PolicyDecision
    name: str

    def evaluate(self, delivery: Delivery, context: PolicyContext) -> PolicyDecision:
        """Return the fixed decision."""
        return self.decision


@attrs.frozen
class Raising:
    """A policy that raises."""

    name: str = "broken"

    def evaluate(self, delivery: Delivery, context: PolicyContext) -> PolicyDecision:
        """Raise a KeyError."""
        raise KeyError("user-1@example.com")


@attrs.frozen
class Garbage:
    """A policy that returns something that is not a decision."""

    name: str = "garbage"

    def evaluate(self, delivery: Delivery, context: PolicyContext) -> PolicyDecision:
        """Return a bool, which no decision is."""
        return True  # type: ignore[return-value]


def test_defer_needs_an_aware_until() -> None:
    """A naive until is refused."""
    with pytest.raises(ValueError, match="timezone-aware"):
        Defer(datetime(2030, 1, 1), "quiet_hours")


def test_defer_stores_until_in_utc() -> None:
    """An aware until in another zone is stored as the same instant in UTC."""
    plus_two = datetime(2030, 1, 1, 14, 0, tzinfo=UTC).astimezone(
        __import__("zoneinfo").ZoneInfo("Europe/Berlin")
    )
    assert datetime(2030, 1, 1, 14, 0, tzinfo=UTC) == Defer(plus_two, "x").until
    expected_zone = UTC
    assert expected_zone == Defer(plus_two, "x").until.tzinfo


@pytest.mark.parametrize("reason", ["", None, 3])
def test_reasons_are_non_empty_strings(reason: object) -> None:
    """Suppress and Defer refuse an empty or non-string reason."""
    with pytest.raises(ValueError, match="reason"):
        Suppress(reason)
    with pytest.raises(ValueError, match="reason"):
        Defer(T0, reason)


def test_reason_members_are_stored_as_plain_strings() -> None:
    """A Reason member and its value build equal decisions of type str."""
    assert Suppress("opted_out") == Suppress(Reason.OPTED_OUT)
    assert str is type(Suppress(Reason.OPTED_OUT).reason)


def test_context_needs_aware_now_and_a_phase() -> None:
    """PolicyContext refuses a naive now and a phase that is not the enum."""
    with pytest.raises(ValueError, match="timezone-aware"):
        PolicyContext(
            now=datetime(2030, 1, 1), phase=PolicyPhase.NOTIFY, recent_attempts=no_attempts
        )
    with pytest.raises(TypeError):
        PolicyContext(now=T0, phase="notify", recent_attempts=no_attempts)  # type: ignore[arg-type]


def test_builtins_satisfy_the_protocol() -> None:
    """Every built-in is a Policy with its documented default name."""
    policies: list[Policy] = [
        PreferencePolicy(lambda d: True),
        ReadStatePolicy(lambda d: False),
        ExpiryPolicy(),
        QuietHoursPolicy(
            datetime(2030, 1, 1, 22).time(), datetime(2030, 1, 1, 7).time(), lambda d: None
        ),
        RateLimitPolicy(3, timedelta(minutes=1)),
    ]
    expected = ["preference", "read_state", "expiry", "quiet_hours", "rate_limit"]
    assert expected == [p.name for p in policies]
    assert all(isinstance(p, Policy) for p in policies)


def test_preference_opted_out_suppresses() -> None:
    """An opted-out recipient gives Suppress('opted_out'); an allowed one proceeds."""
    delivery = make_delivery()
    assert Suppress("opted_out") == PreferencePolicy(lambda d: False).evaluate(
        delivery, make_context()
    )
    assert Proceed() == PreferencePolicy(lambda d: True).evaluate(delivery, make_context())


def test_preference_sees_the_delivery() -> None:
    """The callback is handed the delivery being evaluated."""
    seen: list[Delivery] = []
    delivery = make_delivery(recipient="user-9")

    def allowed(d: Delivery) -> bool:
        seen.append(d)
        return True

    PreferencePolicy(allowed).evaluate(delivery, make_context())
    assert [delivery] == seen


def test_read_state_suppresses_read_notifications() -> None:
    """A notification already read gives Suppress('already_read'); an unread one proceeds."""
    delivery = make_delivery()
    assert Suppress("already_read") == ReadStatePolicy(lambda d: True).evaluate(
        delivery, make_context()
    )
    assert Proceed() == ReadStatePolicy(lambda d: False).evaluate(delivery, make_context())


@pytest.mark.parametrize(
    ("expires_in", "expected"),
    [
        (None, Proceed()),
        (timedelta(seconds=1), Proceed()),
        (timedelta(0), Suppress("expired")),
        (timedelta(seconds=-1), Suppress("expired")),
    ],
)
def test_expiry(expires_in: timedelta | None, expected: PolicyDecision) -> None:
    """Expiry suppresses at and after expires_at, and never without one."""
    expires_at = None if expires_in is None else T0 + expires_in
    assert expected == ExpiryPolicy().evaluate(
        make_delivery(expires_at=expires_at), make_context(T0)
    )


def test_all_proceed_gives_proceed_and_no_name() -> None:
    """With no objection the combined decision is Proceed, made by nobody."""
    policies = [Fixed(Proceed(), "a"), Fixed(Proceed(), "b")]
    assert (Proceed(), None) == evaluate_policies(policies, make_delivery(), make_context())
    assert (Proceed(), None) == evaluate_policies([], make_delivery(), make_context())


def test_first_suppress_wins_and_stops_evaluation() -> None:
    """A suppression beats earlier deferrals, and later policies are not consulted."""
    policies: list[Policy] = [
        Fixed(Defer(T0 + timedelta(hours=5), "quiet_hours"), "late"),
        Fixed(Suppress("opted_out"), "prefs"),
        Fixed(Suppress("expired"), "expiry"),
        Raising(),
    ]
    assert (Suppress("opted_out"), "prefs") == evaluate_policies(
        policies, make_delivery(), make_context()
    )


def test_latest_defer_wins() -> None:
    """Among deferrals the latest until wins, whatever the order."""
    early = Fixed(Defer(T0 + timedelta(minutes=1), "rate_limited"), "rate")
    late = Fixed(Defer(T0 + timedelta(hours=8), "quiet_hours"), "quiet")
    for order in ([early, late], [late, early]):
        assert (late.decision, "quiet") == evaluate_policies(
            [Fixed(Proceed(), "p"), *order], make_delivery(), make_context()
        )


def test_equal_defers_keep_the_first() -> None:
    """Two deferrals to the same instant are credited to the first policy."""
    policies = [Fixed(Defer(T0, "a"), "first"), Fixed(Defer(T0, "b"), "second")]
    assert (Defer(T0, "a"), "first") == evaluate_policies(policies, make_delivery(), make_context())


def test_raising_policy_becomes_policy_error() -> None:
    """A raising policy gives a PolicyError naming it and the delivery, chained to the cause."""
    delivery = make_delivery(id=uuid.UUID(int=42))
    with pytest.raises(PolicyError) as caught:
        evaluate_policies([Fixed(Proceed(), "ok"), Raising()], delivery, make_context())
    assert ("broken", uuid.UUID(int=42), "KeyError") == (
        caught.value.policy_name,
        caught.value.delivery_id,
        caught.value.error_type,
    )
    assert isinstance(caught.value, ChimewayError)
    assert isinstance(caught.value.__cause__, KeyError)
    assert "user-1@example.com" not in str(caught.value)


def test_policy_returning_garbage_becomes_policy_error() -> None:
    """A policy returning a non-decision raises PolicyError, not a silent Proceed."""
    with pytest.raises(PolicyError) as caught:
        evaluate_policies([Garbage()], make_delivery(), make_context())
    expected = "garbage"
    assert expected == caught.value.policy_name
    assert isinstance(caught.value.__cause__, TypeError)


def test_policy_error_pickles() -> None:
    """PolicyError survives a pickle round trip with its fields."""
    error = PolicyError("quiet_hours", uuid.UUID(int=7), "ValueError")
    copy = pickle.loads(pickle.dumps(error))
    assert (error.policy_name, error.delivery_id, error.error_type, str(error)) == (
        copy.policy_name,
        copy.delivery_id,
        copy.error_type,
        str(copy),
    )


def test_max_deferrals_default() -> None:
    """The documented default bound is 100."""
    expected = 100
    assert expected == MAX_DEFERRALS


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        (0, Defer(T0, "quiet_hours")),
        (2, Defer(T0, "quiet_hours")),
        (3, Suppress("too_many_deferrals")),
        (4, Suppress("too_many_deferrals")),
    ],
)
def test_deferral_bound(count: int, expected: PolicyDecision) -> None:
    """A deferral at or past the bound becomes Suppress('too_many_deferrals')."""
    delivery = make_delivery(deferral_count=count)
    assert expected == apply_deferral_bound(Defer(T0, "quiet_hours"), delivery, 3)


@pytest.mark.parametrize("decision", [Proceed(), Suppress("opted_out")])
def test_deferral_bound_leaves_other_decisions(decision: PolicyDecision) -> None:
    """Only a deferral is bounded; proceed and suppress pass through unchanged."""
    delivery = make_delivery(deferral_count=10_000)
    assert decision == apply_deferral_bound(decision, delivery)


def test_deferral_bound_refuses_negative() -> None:
    """A negative bound is a configuration error."""
    with pytest.raises(ValueError, match="max_deferrals"):
        apply_deferral_bound(Proceed(), make_delivery(), -1)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: PreferencePolicy("yes"), TypeError, "'is_allowed' must be callable"),
        (lambda: ReadStatePolicy(None), TypeError, "'is_read' must be callable"),
        (
            lambda: QuietHoursPolicy(time(22), time(7), timezone_for="Europe/Paris"),
            TypeError,
            "'timezone_for' must be callable",
        ),
        (lambda: ExpiryPolicy(name=""), ValueError, "name must be a non-empty str"),
        (lambda: PreferencePolicy(bool, name=5), ValueError, "name must be a non-empty str"),
        (lambda: RateLimitPolicy(5, timedelta(hours=1), name=None), ValueError, "name"),
    ],
)
def test_a_wrong_callback_or_name_is_refused_at_construction(
    make: Callable[[], object], error: type[Exception], message: str
) -> None:
    """A callback that is not callable, a name that is no non-empty str: named when built."""
    with pytest.raises(error, match=message):
        make()
