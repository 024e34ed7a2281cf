"""The dispatch table: documented rows, the catch-all, and the whole product space."""

from __future__ import annotations

import pytest
from hypothesis import given

from chimeway_core import (
    DISPATCH_ROWS,
    TERMINAL_STATUSES,
    Action,
    DeliveryStatus,
    ErrorClass,
    Outcome,
    decide,
)
from chimeway_core.dispatch import (
    ANY,
    CATCH_ALL,
    CATCH_ALL_ROWS,
    TABLE_ROWS,
    AttemptRelation,
    attempt_event,
    match_row,
)
from chimeway_core.outcomes import OUTCOME_EVENTS, error_class_key
from chimeway_core.render import dispatch_table_rows, outcome_event_rows
from chimeway_core.states import Event
from chimeway_core.testing import strategies

F, C, R = DeliveryStatus.FAILED, DeliveryStatus.CANCELLED, DeliveryStatus.READY
DOCUMENTED = {None, *ErrorClass}


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((Outcome.SUCCEEDED, None, DeliveryStatus.SUCCEEDED, 1, 5), Action.ACK),
        ((Outcome.FAILED, ErrorClass.PERMANENT, C, 1, 5), Action.ACK),
        ((Outcome.FAILED, ErrorClass.BOUNCED, C, 5, 5), Action.ACK),
        ((Outcome.FAILED, ErrorClass.TEMPORARY, F, 4, 5), Action.RETRY),
        ((Outcome.FAILED, ErrorClass.TEMPORARY, F, 5, 5), Action.EXHAUST),
        ((Outcome.FAILED, ErrorClass.TEMPORARY, F, 9, 5), Action.EXHAUST),
        ((Outcome.UNKNOWN, None, F, 1, 5), Action.RETRY),
        ((Outcome.UNKNOWN, None, F, 5, 5), Action.EXHAUST),
        ((Outcome.UNKNOWN, None, C, 2, 5), Action.ACK),
        # catch-all: converges only on the final attempt in failed
        ((Outcome.FAILED, "unknown_classification", F, 5, 5), Action.EXHAUST),
        ((Outcome.FAILED, "unknown_classification", F, 4, 5), Action.RAISE),
        ((Outcome.FAILED, ErrorClass.PERMANENT, F, 1, 5), Action.RAISE),
        ((Outcome.FAILED, ErrorClass.TEMPORARY, C, 1, 5), Action.RAISE),
        ((Outcome.FAILED, ErrorClass.TEMPORARY, R, 5, 5), Action.RAISE),
        ((Outcome.FAILED, None, F, 5, 5), Action.EXHAUST),
    ],
)
def test_documented_examples(shape: tuple[object, ...], expected: Action) -> None:
    """Each documented row, and the catch-all's two branches, on concrete shapes."""
    assert expected == decide(*shape)  # type: ignore[arg-type]


@given(
    outcome=strategies.outcomes,
    error_class=strategies.error_classes,
    status=strategies.statuses,
    attempts=strategies.attempt_shapes(),
)
def test_product_space(
    outcome: Outcome, error_class: object, status: DeliveryStatus, attempts: tuple[int, int]
) -> None:
    """Every shape yields an Action obeying the table's laws; nothing else escapes."""
    attempt, maximum = attempts
    action, row = match_row(outcome, error_class, status, attempt, maximum)
    assert action == decide(outcome, error_class, status, attempt, maximum)
    assert isinstance(action, Action)
    final = attempt >= maximum
    if action is Action.EXHAUST:
        assert status is F
        assert final
    if outcome is Outcome.SUCCEEDED:
        assert Action.ACK == action
    if action is Action.RETRY:
        assert status is F
        assert not final
    if action is Action.ACK and outcome is not Outcome.SUCCEEDED:
        assert status in TERMINAL_STATUSES
    if action is Action.RAISE:
        # only shapes outside the documented rows, and only where convergence is illegal
        assert "catch_all" == row
        assert not (final and status is F)
    if not _documented(error_class) and outcome is Outcome.FAILED:
        assert "catch_all" == row


@given(
    outcome=strategies.outcomes,
    error_class=strategies.error_classes,
    attempts=strategies.attempt_shapes(),
)
def test_recorded_shapes_converge_or_raise(
    outcome: Outcome, error_class: object, attempts: tuple[int, int]
) -> None:
    """Shapes produced by recording a live delivery never leave it non-terminal silently."""
    attempt, maximum = attempts
    for retry_unknown in (True, False):
        status = _record(outcome, error_class, retry_unknown)
        action = decide(outcome, error_class, status, attempt, maximum)
        if status in TERMINAL_STATUSES:
            assert Action.ACK == action
        else:
            assert action in {Action.RETRY, Action.EXHAUST, Action.RAISE}
            if attempt >= maximum:
                assert Action.EXHAUST == action


def _documented(error_class: object) -> bool:
    return any(error_class is c or error_class == c for c in DOCUMENTED)


def _record(outcome: Outcome, error_class: object, retry_unknown: bool) -> DeliveryStatus:
    from chimeway_core import apply_event

    event = attempt_event(outcome, error_class, retry_unknown=retry_unknown)
    return apply_event(F, event).dest


def test_undocumented_failure_stays_live() -> None:
    """A failure of an undocumented class fires fail_temporary, leaving the table to decide."""
    assert Event.FAIL_TEMPORARY == attempt_event(Outcome.FAILED, "weird", retry_unknown=True)
    assert Event.BOUNCE == attempt_event(Outcome.FAILED, "bounced", retry_unknown=True)
    assert Event.LOSE_OUTCOME_FINAL == attempt_event(Outcome.UNKNOWN, None, retry_unknown=False)


def test_database_strings_match_their_enum() -> None:
    """An error class read back from the database as a plain string matches its row."""
    assert Action.RETRY == decide(Outcome.FAILED, "temporary", F, 1, 3)


def test_rows_are_data() -> None:
    """The documented rows are a tuple literal with unique names."""
    names = [row.name for row in DISPATCH_ROWS]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize(
    ("attempt", "maximum", "name"), [(0, 5, "attempt"), (-1, 5, "attempt"), (1, 0, "max_attempts")]
)
def test_bad_counts_raise_value_error_naming_the_argument(
    attempt: int, maximum: int, name: str
) -> None:
    """attempt < 1 or max_attempts < 1 raises ValueError naming the argument."""
    with pytest.raises(ValueError, match=f"^{name} must be >= 1"):
        decide(Outcome.FAILED, ErrorClass.TEMPORARY, F, attempt, maximum)


@pytest.mark.parametrize("status", ["failed", None, 3])
def test_status_is_never_coerced(status: object) -> None:
    """A status that is not a DeliveryStatus raises TypeError, even its own string value."""
    with pytest.raises(TypeError, match="status must be a DeliveryStatus"):
        decide(Outcome.FAILED, ErrorClass.TEMPORARY, status, 1, 5)  # type: ignore[arg-type]


def test_outcome_is_never_coerced() -> None:
    """An outcome that is not an Outcome raises TypeError."""
    with pytest.raises(TypeError, match="outcome must be an Outcome"):
        decide("failed", ErrorClass.TEMPORARY, F, 1, 5)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [1.0, True, "1"])
def test_counts_must_be_ints(bad: object) -> None:
    """Non-int attempt counts (bool and float included) raise TypeError."""
    with pytest.raises(TypeError, match="attempt must be an int"):
        decide(Outcome.FAILED, ErrorClass.TEMPORARY, F, bad, 5)  # type: ignore[arg-type]


def test_the_catch_all_rows_end_the_table() -> None:
    """The catch-all is two real rows after the documented ones; the last matches everything."""
    assert (*DISPATCH_ROWS, *CATCH_ALL_ROWS) == TABLE_ROWS
    assert [CATCH_ALL, CATCH_ALL] == [row.name for row in CATCH_ALL_ROWS]
    last = TABLE_ROWS[-1]
    assert (ANY, ANY, ANY, Action.RAISE) == (
        last.outcome,
        last.error_classes,
        last.status,
        last.action,
    )


@given(
    outcome=strategies.outcomes,
    error_class=strategies.error_classes,
    status=strategies.statuses,
    attempts=strategies.attempt_shapes(),
)
def test_the_first_matching_row_decides(
    outcome: Outcome, error_class: object, status: DeliveryStatus, attempts: tuple[int, int]
) -> None:
    """decide() and match_row() answer with the first row of TABLE_ROWS that matches."""
    attempt, maximum = attempts
    key = error_class_key(error_class)
    relation = AttemptRelation.FINAL if attempt >= maximum else AttemptRelation.BELOW_MAX
    first = next(
        row
        for row in TABLE_ROWS
        if row.outcome in {ANY, outcome}
        and (row.error_classes is ANY or key in row.error_classes)
        and row.status in {ANY, status}
        and row.attempt in {AttemptRelation.ANY, relation}
    )
    assert (first.action, first.name) == match_row(outcome, error_class, status, attempt, maximum)
    assert first.action == decide(outcome, error_class, status, attempt, maximum)


@given(outcome=strategies.outcomes, error_class=strategies.error_classes)
def test_outcome_to_event_is_the_data_literal(outcome: Outcome, error_class: object) -> None:
    """attempt_event() fires what DESIGN.md says, read from OUTCOME_EVENTS."""
    for retry_unknown in (True, False):
        event = attempt_event(outcome, error_class, retry_unknown=retry_unknown)
        if outcome is Outcome.SUCCEEDED:
            assert Event.SUCCEED == event
        elif outcome is Outcome.UNKNOWN:
            expected = Event.LOSE_OUTCOME_RETRYABLE if retry_unknown else Event.LOSE_OUTCOME_FINAL
            assert expected == event
        elif error_class is ErrorClass.PERMANENT or error_class == "permanent":
            assert Event.FAIL_PERMANENT == event
        elif error_class is ErrorClass.BOUNCED or error_class == "bounced":
            assert Event.BOUNCE == event
        else:
            assert Event.FAIL_TEMPORARY == event


def test_attempt_event_refuses_a_string_outcome() -> None:
    """An outcome that is not an Outcome raises TypeError."""
    with pytest.raises(TypeError, match="outcome must be an Outcome"):
        attempt_event("failed", None, retry_unknown=True)  # type: ignore[arg-type]


def test_the_renderer_writes_every_row_and_nothing_else() -> None:
    """The rendered tables have one line per data row, in order, and no row of their own."""
    assert [row.name for row in TABLE_ROWS] == [cells[0] for cells in dispatch_table_rows()[1:]]
    assert [row.name for row in OUTCOME_EVENTS] == [cells[0] for cells in outcome_event_rows()[1:]]
