"""A RuleBasedStateMachine over the delivery state machine and the dispatch table.

The system under test is :class:`DeliveryLifecycle` (driven by ``transitions``)
plus :func:`decide`; the reference model is DESIGN.md's table written out by
hand in ``tests/core/test_states.py``.
"""

from __future__ import annotations

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from chimeway_core import (
    TERMINAL_STATUSES,
    Action,
    DeliveryStatus,
    ErrorClass,
    Event,
    IllegalTransitionError,
    Outcome,
    Reason,
    decide,
)
from chimeway_core.states import DeliveryLifecycle
from tests.core.test_states import DESIGN_TABLE


class DeliveryMachine(RuleBasedStateMachine):
    """One delivery, fired at by arbitrary events and by temporary failures."""

    def __init__(self) -> None:
        super().__init__()
        self.lifecycle = DeliveryLifecycle()
        self.model_status = DeliveryStatus.READY
        self.attempts = 0
        self.max_attempts = 1
        self.only_temporary = True
        self.terminal_seen: DeliveryStatus | None = None

    def teardown(self) -> None:
        self.lifecycle.close()

    @initialize(maximum=st.integers(1, 12))
    def choose_budget(self, maximum: int) -> None:
        self.max_attempts = maximum

    @rule(event=st.sampled_from(Event))
    def fire_any_event(self, event: Event) -> None:
        """Any event: legal ones move as the reference says; illegal ones raise, change nothing."""
        self.only_temporary = False
        before = self.lifecycle.status
        expected = DESIGN_TABLE.get((self.model_status, event))
        if expected is None:
            with pytest.raises(IllegalTransitionError):
                self.lifecycle.fire(event, reason="policy_reason")
            assert before == self.lifecycle.status
        else:
            assert expected[0] == self.lifecycle.fire(event, reason="policy_reason")
            self.model_status = expected[0]

    @precondition(lambda self: self.model_status not in TERMINAL_STATUSES)
    @precondition(lambda self: self.attempts < self.max_attempts)
    @rule()
    def attempt_fails_temporarily(self) -> None:
        """A temporary failure is recorded, then the table decides."""
        self.attempts += 1
        status = self.lifecycle.fire(Event.FAIL_TEMPORARY)
        self.model_status = status
        action = decide(
            Outcome.FAILED, ErrorClass.TEMPORARY, status, self.attempts, self.max_attempts
        )
        if self.attempts < self.max_attempts:
            assert Action.RETRY == action
        else:
            assert Action.EXHAUST == action
            self.model_status = self.lifecycle.fire(Event.EXHAUST)
            assert DeliveryStatus.CANCELLED == self.model_status
            if self.only_temporary:
                assert Reason.RETRIES_EXHAUSTED == self.lifecycle.reason

    @invariant()
    def matches_model(self) -> None:
        assert self.model_status == self.lifecycle.status

    @invariant()
    def terminal_is_absorbing(self) -> None:
        if self.terminal_seen is not None:
            assert self.terminal_seen == self.lifecycle.status
        elif self.lifecycle.status in TERMINAL_STATUSES:
            self.terminal_seen = self.lifecycle.status

    @invariant()
    def temporary_failures_exhaust_exactly_at_the_budget(self) -> None:
        if self.only_temporary:
            finished = self.lifecycle.status is DeliveryStatus.CANCELLED
            assert finished == (self.attempts == self.max_attempts)


TestDeliveryMachine = DeliveryMachine.TestCase
