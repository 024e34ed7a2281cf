"""The state machine: the one declaration, its compiled table, its rules."""

from __future__ import annotations

import pytest
from hypothesis import given

from chimeway_core import (
    TERMINAL_STATUSES,
    DeliveryStatus,
    Event,
    IllegalTransitionError,
    Reason,
    apply_event,
)
from chimeway_core.states import (
    LIVE_STATUSES,
    MACHINE,
    POLICY_REASON,
    RESENDABLE_STATUSES,
    TRANSITION_DECLARATION,
    TRANSITION_TABLE,
    DeliveryLifecycle,
)
from chimeway_core.testing import strategies

R, F, S, C, X = (
    DeliveryStatus.READY,
    DeliveryStatus.FAILED,
    DeliveryStatus.SUCCEEDED,
    DeliveryStatus.CANCELLED,
    DeliveryStatus.SUPPRESSED,
)

#: DESIGN.md's table, written out by hand, independent of the declaration.
DESIGN_TABLE = {
    (R, Event.SUCCEED): (S, None),
    (F, Event.SUCCEED): (S, None),
    (R, Event.FAIL_TEMPORARY): (F, None),
    (F, Event.FAIL_TEMPORARY): (F, None),
    (R, Event.FAIL_PERMANENT): (C, Reason.PERMANENT_FAILURE),
    (F, Event.FAIL_PERMANENT): (C, Reason.PERMANENT_FAILURE),
    (R, Event.BOUNCE): (C, Reason.BOUNCED),
    (F, Event.BOUNCE): (C, Reason.BOUNCED),
    (R, Event.LOSE_OUTCOME_RETRYABLE): (F, None),
    (F, Event.LOSE_OUTCOME_RETRYABLE): (F, None),
    (R, Event.LOSE_OUTCOME_FINAL): (C, Reason.OUTCOME_UNKNOWN),
    (F, Event.LOSE_OUTCOME_FINAL): (C, Reason.OUTCOME_UNKNOWN),
    (F, Event.EXHAUST): (C, Reason.RETRIES_EXHAUSTED),
    (R, Event.SUPPRESS): (X, None),
    (F, Event.SUPPRESS): (X, None),
    (R, Event.CANCEL): (C, Reason.CANCELLED),
    (F, Event.CANCEL): (C, Reason.CANCELLED),
}


def test_compiled_table_is_the_design_table() -> None:
    """The table compiled from the transitions machine is exactly DESIGN.md's."""
    actual = {key: (t.dest, t.reason) for key, t in TRANSITION_TABLE.items()}
    assert DESIGN_TABLE == actual


def test_terminal_statuses() -> None:
    """Succeeded, cancelled and suppressed are terminal; ready and failed are not."""
    assert frozenset({S, C, X}) == TERMINAL_STATUSES


@pytest.mark.parametrize("status", list(DeliveryStatus))
@pytest.mark.parametrize("event", list(Event))
def test_every_pair_agrees_with_transitions(status: DeliveryStatus, event: Event) -> None:
    """apply_event and the transitions machine itself agree on every (status, event)."""
    lifecycle = DeliveryLifecycle(status)
    try:
        if (status, event) in DESIGN_TABLE:
            expected = DESIGN_TABLE[status, event][0]
            assert expected == apply_event(status, event).dest
            assert expected == lifecycle.fire(event, reason="policy")
        else:
            with pytest.raises(IllegalTransitionError):
                apply_event(status, event)
            with pytest.raises(IllegalTransitionError) as raised:
                lifecycle.fire(event)
            assert (status, event) == (raised.value.status, raised.value.event)
            assert status == lifecycle.status
    finally:
        lifecycle.close()


@given(status=strategies.statuses, event=strategies.events)
def test_nothing_leaves_a_terminal_status(status: DeliveryStatus, event: Event) -> None:
    """Every event from a terminal status raises IllegalTransitionError."""
    if status in TERMINAL_STATUSES:
        with pytest.raises(IllegalTransitionError):
            apply_event(status, event)


def test_illegal_transition_error_names_status_and_event() -> None:
    """The error carries and names the from-status and the event."""
    with pytest.raises(IllegalTransitionError) as raised:
        apply_event(DeliveryStatus.SUCCEEDED, Event.CANCEL)
    assert DeliveryStatus.SUCCEEDED == raised.value.status
    assert Event.CANCEL == raised.value.event
    assert "'cancel'" in str(raised.value)
    assert "'succeeded'" in str(raised.value)


def test_exhaust_only_from_failed() -> None:
    """Retries can only be exhausted from failed, never straight from ready."""
    with pytest.raises(IllegalTransitionError):
        apply_event(DeliveryStatus.READY, Event.EXHAUST)


@pytest.mark.parametrize("bad", ["ready", None, 1])
def test_strings_are_never_coerced(bad: object) -> None:
    """A status or event that is not the enum itself is a TypeError."""
    with pytest.raises(TypeError, match="status must be a DeliveryStatus"):
        apply_event(bad, Event.SUCCEED)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="event must be an Event"):
        apply_event(DeliveryStatus.READY, bad)  # type: ignore[arg-type]


def test_status_values_are_lowercase_names() -> None:
    """Each status's value is its lowercase name: what the database stores."""
    assert [s.name.lower() for s in DeliveryStatus] == [s.value for s in DeliveryStatus]


def test_machine_declares_every_status_and_event() -> None:
    """The transitions machine knows every status and every event."""
    assert {s.value for s in DeliveryStatus} == set(MACHINE.states)
    assert {e.value for e in Event} == set(MACHINE.events)


def test_lifecycle_keeps_the_policy_reason_for_suppress() -> None:
    """A suppress keeps the reason the policy gave; fixed reasons override."""
    lifecycle = DeliveryLifecycle()
    try:
        lifecycle.fire(Event.SUPPRESS, reason="opted_out")
        assert "opted_out" == lifecycle.reason
    finally:
        lifecycle.close()


def test_the_sets_are_derived_from_the_declaration() -> None:
    """Live is ready and failed, terminal the rest, resendable the terminal ones never sent."""
    assert frozenset({R, F}) == LIVE_STATUSES
    assert frozenset(DeliveryStatus) - LIVE_STATUSES == TERMINAL_STATUSES
    assert frozenset({C, X}) == RESENDABLE_STATUSES


def test_the_declaration_is_typed_rows() -> None:
    """Every row holds the enums themselves, and the machine has exactly the declared moves."""
    declared: dict[tuple[DeliveryStatus, Event], DeliveryStatus] = {}
    for row in TRANSITION_DECLARATION:
        assert all(type(source) is DeliveryStatus for source in row.sources)
        assert type(row.event) is Event
        assert type(row.dest) is DeliveryStatus
        assert row.reason is None or row.reason is POLICY_REASON or type(row.reason) is Reason
        declared.update({(source, row.event): row.dest for source in row.sources})
    drawn = {
        (DeliveryStatus(source), Event(name)): DeliveryStatus(str(move.dest))
        for name, event in MACHINE.events.items()
        for source, moves in event.transitions.items()
        for move in moves
    }
    assert declared == drawn
    assert set(DESIGN_TABLE) == set(declared)
