"""The property suite chimeway runs on itself, shipped so users can run it too.

Run it against the installed library with ``chimeway selftest`` (which runs
``pytest --pyargs chimeway_core.testing.selftest``; needs the ``testing``
extra). It covers:

- the dispatch table over its whole product space (hypothesis);
- the backend conformance suite on the in-memory backend, and on your own
  backend when ``CHIMEWAY_SELFTEST_HARNESS=module:factory`` names a
  zero-argument callable returning a
  :class:`~chimeway_core.testing.conformance.Harness`;
- the stateful model test of the whole engine
  (:class:`~chimeway_core.testing.stateful.EngineMachine`), with
  ``CHIMEWAY_SELFTEST_EXAMPLES`` examples (default 200).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings

from chimeway_core.dispatch import Action, decide, match_row
from chimeway_core.outcomes import Outcome
from chimeway_core.states import DeliveryStatus
from chimeway_core.store import SQLStore
from chimeway_core.testing import strategies
from chimeway_core.testing.conformance import BackendConformance, Harness, MemoryHarness
from chimeway_core.testing.stateful import EngineMachine

__all__ = [
    "TestConfiguredBackendConformance",
    "TestDispatchTable",
    "TestEngineMachine",
    "TestMemoryBackendConformance",
]

HARNESS_VARIABLE = "CHIMEWAY_SELFTEST_HARNESS"
EXAMPLES_VARIABLE = "CHIMEWAY_SELFTEST_EXAMPLES"


class TestDispatchTable:
    """decide() over every outcome, error class, status and attempt relation."""

    @given(shape=strategies.dispatch_shapes)
    def test_every_shape_converges_or_raises(
        self, shape: tuple[Outcome, object, DeliveryStatus, int, int]
    ) -> None:
        """EXHAUST only when failed on the final attempt; RAISE only from the catch-all."""
        outcome, error_class, status, attempt, maximum = shape
        action, row = match_row(outcome, error_class, status, attempt, maximum)
        assert action is decide(outcome, error_class, status, attempt, maximum)
        final = attempt >= maximum
        if action is Action.EXHAUST:
            assert status is DeliveryStatus.FAILED
            assert final
        if outcome is Outcome.SUCCEEDED:
            assert action is Action.ACK
        if action is Action.RAISE:
            assert row == "catch_all"
            assert not (final and status is DeliveryStatus.FAILED)


@pytest.fixture
def selftest_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SQLStore]:
    """A fresh SQLite ledger."""
    store = SQLStore(f"sqlite:///{tmp_path_factory.mktemp('selftest') / 'ledger.db'}")
    store.create_all()
    yield store
    store.engine.dispose()


class TestMemoryBackendConformance(BackendConformance):
    """The in-memory backend, in virtual time."""

    @pytest.fixture
    def harness(self, selftest_store: SQLStore) -> Harness:
        """The memory harness on a fresh ledger."""
        return MemoryHarness(selftest_store)


class TestConfiguredBackendConformance(BackendConformance):
    """Your backend, when CHIMEWAY_SELFTEST_HARNESS names a harness factory."""

    @pytest.fixture
    def harness(self) -> Harness:
        """The harness the environment names, or a skip."""
        path = os.environ.get(HARNESS_VARIABLE)
        if not path:
            pytest.skip(f"{HARNESS_VARIABLE} is not set: no backend of yours to test")
        module, _, attribute = path.partition(":")
        factory = getattr(importlib.import_module(module), attribute)
        harness: Harness = factory()
        return harness


TestEngineMachine = EngineMachine.TestCase
TestEngineMachine.settings = settings(
    max_examples=int(os.environ.get(EXAMPLES_VARIABLE, "200")),
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
