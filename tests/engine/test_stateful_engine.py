"""The stateful model test of the whole engine runs here with 500 examples.

The machine itself ships in the kit (:mod:`chimeway_core.testing.stateful`)
so ``chimeway selftest`` runs the very same thing against an installed copy.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from chimeway_core.testing.stateful import EngineMachine

TestEngineMachine = EngineMachine.TestCase
TestEngineMachine.settings = settings(
    max_examples=500,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.mark.usefixtures("table_without_retry")
def test_a_broken_table_is_caught() -> None:
    """Changing the temporary_retry row to ACK (dropping the retry) fails the stateful test."""
    with pytest.raises(AssertionError, match="still live after draining") as caught:
        run_state_machine_as_test(
            EngineMachine,
            settings=settings(
                max_examples=100,
                stateful_step_count=6,
                deadline=None,
                database=None,
                derandomize=True,
            ),
        )
    # The shrunk counterexample names the rule that made the leaked delivery.
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert re.search(r"state\.(first_)?notify\(", notes)
