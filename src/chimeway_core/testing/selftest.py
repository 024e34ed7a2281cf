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
  (:class:`~chimeway_core.testing.stateful.EngineMachine`) on the memory
  backend, with ``CHIMEWAY_SELFTEST_EXAMPLES`` examples (default 200);
- the same machine timed for real time
  (:class:`~chimeway_core.testing.stateful.RealTimeEngineMachine`) on your
  backend when ``CHIMEWAY_SELFTEST_MACHINE_HARNESS=module:factory`` names a
  :class:`~chimeway_core.testing.stateful.MachineHarnessFactory`, with
  ``CHIMEWAY_SELFTEST_MACHINE_EXAMPLES`` examples (default 20: a real queue
  costs real seconds per example).

- both of those on your application, when ``CHIMEWAY_SELFTEST_APP=module:engine``
  names its engine (``chimeway selftest --app``): its backend's kind on a
  scratch queue of its service, and its database in a scratch namespace,
  each test's removed at its end (:mod:`chimeway_core.testing.deployment`).

A variable that does not name a callable (not ``module:attribute``, a module
that does not import, a missing attribute, not callable), or a number of
examples that is not a whole number >= 1, fails the tests that need it with
one line naming the variable and the problem; the module itself always
collects.
"""

from __future__ import annotations

import importlib
import os
import unittest
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import ClassVar, Final, NoReturn

from chimeway_core.dispatch import Action, decide, match_row
from chimeway_core.errors import MissingExtraError
from chimeway_core.outcomes import Outcome
from chimeway_core.states import DeliveryStatus
from chimeway_core.store import SQLStore
from chimeway_core.testing import strategies
from chimeway_core.testing.conformance import (
    BackendConformance,
    EngineFactory,
    Harness,
    MemoryHarness,
    conformance_engine,
)
from chimeway_core.testing.deployment import APP_VARIABLE, app_harness, application_backend
from chimeway_core.testing.stateful import (
    EngineMachine,
    MachineHarness,
    MachineHarnessFactory,
    machine_on,
)

try:
    import hypothesis
    import pytest
    from hypothesis import HealthCheck, given, settings
    from hypothesis.stateful import run_state_machine_as_test
except ImportError as error:  # pragma: no cover - the optional extra "testing"
    raise MissingExtraError(
        "testing", feature="chimeway_core.testing.selftest (the property suite)"
    ) from error

__all__ = [
    "TestAppBackendConformance",
    "TestAppEngineMachine",
    "TestConfiguredBackendConformance",
    "TestConfiguredEngineMachine",
    "TestDispatchTable",
    "TestEngineMachine",
    "TestMemoryBackendConformance",
]

#: Names a zero-argument callable returning your backend's conformance Harness.
HARNESS_VARIABLE: Final = "CHIMEWAY_SELFTEST_HARNESS"
#: Examples of the stateful machine on the memory backend.
EXAMPLES_VARIABLE: Final = "CHIMEWAY_SELFTEST_EXAMPLES"
#: Their default.
EXAMPLES_DEFAULT: Final = 200
#: Names your backend's MachineHarnessFactory.
MACHINE_HARNESS_VARIABLE: Final = "CHIMEWAY_SELFTEST_MACHINE_HARNESS"
#: Examples of the stateful machine on your backend.
MACHINE_EXAMPLES_VARIABLE: Final = "CHIMEWAY_SELFTEST_MACHINE_EXAMPLES"
#: Their default: each example runs a real queue in real time.
MACHINE_EXAMPLES_DEFAULT: Final = 20

_MISSING: Final = object()


def _configured_factory(variable: str, missing: str) -> Callable[..., object]:
    """The callable ``variable`` names as ``module:attribute``; skip with ``missing`` if unset.

    Any problem finding it fails the test with one line naming the variable
    and the problem, never a traceback.
    """
    path = os.environ.get(variable, "").strip()
    if not path:
        pytest.skip(f"{variable} is not set: {missing}")
    module_name, sep, attribute = path.partition(":")

    def fail(problem: str) -> NoReturn:
        pytest.fail(f"{variable}={path!r}: {problem}", pytrace=False)

    if not sep or not module_name or not attribute:
        fail("expected module:attribute (like myproject.selftest:factory)")
    # Fail outside the except blocks: pytest would print the chained import error too.
    problem = ""
    found: object = None
    try:
        found = importlib.import_module(module_name)
    except (Exception, SystemExit) as error:
        first = next((line for line in str(error).splitlines() if line.strip()), "")
        problem = f"importing {module_name!r} raised {type(error).__qualname__}: {first}"
    if problem:
        fail(problem)
    for part in attribute.split("."):
        found = getattr(found, part, _MISSING)
        if found is _MISSING:
            fail(f"module {module_name!r} has no attribute {attribute!r}")
    if not callable(found):
        fail(f"{attribute} is not callable (its type is {type(found).__qualname__})")
    return found


def _configured_examples(variable: str, default: int) -> int:
    """The whole number >= 1 that ``variable`` holds, or ``default`` if it is unset.

    Anything else fails the test with one line naming the variable.
    """
    raw = os.environ.get(variable)
    if raw is None:
        return default
    text = raw.strip()
    # isdecimal, not isdigit: "²" is a digit int() refuses; ASCII only, as a shell user types.
    if not (text.isascii() and text.isdecimal()) or int(text) < 1:
        pytest.fail(f"{variable}={raw!r}: expected a whole number >= 1", pytrace=False)
    return int(text)


_MACHINE_SETTINGS: Final = settings(
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


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
        factory = _configured_factory(HARNESS_VARIABLE, "no backend of yours to test")
        harness: Harness = factory()  # type: ignore[assignment]  # the user's promise
        return harness


class TestEngineMachine(unittest.TestCase):
    """The stateful machine on the memory backend, CHIMEWAY_SELFTEST_EXAMPLES examples.

    The variable is read when the test runs, so a bad value fails this test
    in one line instead of the whole module at import.
    """

    settings: ClassVar[hypothesis.settings] = _MACHINE_SETTINGS

    def runTest(self) -> None:  # noqa: N802 - unittest's name for a case's only test
        """The engine's invariants hold over every example."""
        examples = _configured_examples(EXAMPLES_VARIABLE, EXAMPLES_DEFAULT)
        run_state_machine_as_test(
            EngineMachine, settings=settings(self.settings, max_examples=examples)
        )


class TestConfiguredEngineMachine:
    """The real-time stateful machine on your backend, named by CHIMEWAY_SELFTEST_MACHINE_HARNESS.

    Skipped when the variable is not set.
    """

    def test_invariants_hold_on_your_backend(self) -> None:
        """The engine's invariants hold with every job going through your queue and worker."""
        factory: MachineHarnessFactory = _configured_factory(  # type: ignore[assignment]
            MACHINE_HARNESS_VARIABLE, "no backend of yours to run the stateful machine on"
        )
        examples = _configured_examples(MACHINE_EXAMPLES_VARIABLE, MACHINE_EXAMPLES_DEFAULT)
        run_state_machine_as_test(
            machine_on(factory),
            settings=settings(_MACHINE_SETTINGS, max_examples=examples, stateful_step_count=15),
        )


#: How long one job may run on a queue that kills jobs: the conformance
#: channels are quick, and a slow database round trip on a busy machine is not.
_CONFORMANCE_TIME_LIMIT: Final = 5.0
#: The real-time machine's: within its lease (0.5 s call + 0.5 s margin), so
#: a job the queue cuts short is one more worker death for the rescuer.
_MACHINE_TIME_LIMIT: Final = 1.0


def _configured_app() -> tuple[str, type[BaseException] | None]:
    """The application ``CHIMEWAY_SELFTEST_APP`` names, checked; skip if unset.

    Returns its path and what its backend raises to stop a running job (the
    machine's worker crash). A path that does not load, or a backend with no
    selftest harness, fails the test in one line.
    """
    path = os.environ.get(APP_VARIABLE, "").strip()
    if not path:
        pytest.skip(f"{APP_VARIABLE} is not set: no application of yours to test")
    problem = ""
    interrupts: tuple[type[BaseException], ...] = ()
    try:
        interrupts = application_backend(path).interrupts
    except Exception as error:
        problem = f"{type(error).__qualname__}: {error}"
    if problem:
        pytest.fail(f"{APP_VARIABLE}={path!r}: {problem}", pytrace=False)
    return path, (interrupts[0] if interrupts else None)


class TestAppBackendConformance(BackendConformance):
    """Your application's backend and database, on a scratch queue and namespace each test."""

    @pytest.fixture
    def harness(self) -> Iterator[Harness]:
        """The application's kind of harness, or a skip when CHIMEWAY_SELFTEST_APP is unset."""
        path, _ = _configured_app()
        with app_harness(path, conformance_engine, time_limit=_CONFORMANCE_TIME_LIMIT) as harness:
            yield harness


class TestAppEngineMachine:
    """The real-time stateful machine on your application's backend and database."""

    def test_invariants_hold_on_your_application(self) -> None:
        """The engine's invariants hold with every job going through your queue's service."""
        path, crash = _configured_app()

        def factory(engine_factory: EngineFactory) -> AbstractContextManager[MachineHarness]:
            return app_harness(path, engine_factory, time_limit=_MACHINE_TIME_LIMIT)

        examples = _configured_examples(MACHINE_EXAMPLES_VARIABLE, MACHINE_EXAMPLES_DEFAULT)
        run_state_machine_as_test(
            machine_on(factory, worker_crash=crash),
            settings=settings(_MACHINE_SETTINGS, max_examples=examples, stateful_step_count=15),
        )
