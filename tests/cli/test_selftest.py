"""``chimeway selftest`` runs the shipped property suite against the installed library."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Final

import pytest
from sqlalchemy import func, select

from chimeway_core.schema import AttemptRow, DeliveryRow
from chimeway_core.store import SQLStore
from tests.cli.conftest import COMMAND, SRC, Invoke, run
from tests.cli.selftest_machine_rq import LEDGER_VARIABLE
from tests.services import require

#: The repository root, so the selftest's pytest can import ``tests.cli.selftest_machine_rq``.
ROOT: Final = SRC.parent
MACHINE_FACTORY: Final = "tests.cli.selftest_machine_rq:machine_harness"
MACHINE_VARIABLE: Final = "CHIMEWAY_SELFTEST_MACHINE_HARNESS"

#: selftest_machine_rq imports redis and rq.
pytestmark = pytest.mark.extras


def test_selftest_passes_against_this_installation() -> None:
    """The suite passes, says how many tests ran, and why the machine on your backend skipped."""
    result = subprocess.run(
        [*COMMAND, "selftest", "--examples", "10", "--", "-q", "-rs"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert 0 == result.returncode, result.stdout[-2000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
    assert f"{MACHINE_VARIABLE} is not set" in result.stdout
    assert "Traceback" not in result.stderr


def test_selftest_with_a_broken_harness_fails() -> None:
    """A harness path that does not import fails the run with exit 1."""
    result = subprocess.run(
        [
            *COMMAND,
            "selftest",
            "--examples",
            "1",
            "--harness",
            "no_such_module:factory",
            "--",
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert 1 == result.returncode
    assert "No module named 'no_such_module'" in result.stdout


@pytest.mark.slow
def test_selftest_runs_the_machine_on_a_configured_backend(
    fresh_postgres: str, tmp_path: Path
) -> None:
    """--machine-harness runs the real-time machine on RQ (Redis database 7) and its ledger."""
    require("redis")
    result = run(
        "selftest",
        "--machine-harness",
        MACHINE_FACTORY,
        "--machine-examples",
        "5",
        "--",
        "-q",
        "-k",
        "TestConfiguredEngineMachine",
        cwd=tmp_path,
        env={LEDGER_VARIABLE: fresh_postgres},
        path=[ROOT],
        timeout=300,
    )
    assert 0 == result.code, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 passed" in result.stdout
    # The machine ran on the factory's harness: its deliveries and attempts are in that ledger.
    store = SQLStore(fresh_postgres)
    try:
        with store.engine.connect() as conn:
            deliveries = conn.execute(select(func.count()).select_from(DeliveryRow)).scalar_one()
            attempts = conn.execute(select(func.count()).select_from(AttemptRow)).scalar_one()
    finally:
        store.engine.dispose()
    assert deliveries >= 5
    assert attempts > 0


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (
            "no_such_module:machine_harness",
            "importing 'no_such_module' raised ModuleNotFoundError: "
            "No module named 'no_such_module'",
        ),
        (
            "tests.cli.selftest_machine_rq:no_such_factory",
            "module 'tests.cli.selftest_machine_rq' has no attribute 'no_such_factory'",
        ),
        (
            "tests.cli.selftest_machine_rq:REDIS_DB",
            "REDIS_DB is not callable (its type is int)",
        ),
    ],
)
def test_a_bad_machine_harness_fails_in_one_line(value: str, problem: str, tmp_path: Path) -> None:
    """A machine harness that does not import, is missing or is not callable: one line, exit 1."""
    result = run(
        "selftest",
        "--machine-harness",
        value,
        "--",
        "-q",
        "-rf",
        "-k",
        "TestConfiguredEngineMachine",
        cwd=tmp_path,
        path=[ROOT],
        timeout=120,
    )
    assert 1 == result.code, result.stdout[-2000:] + result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if f"{MACHINE_VARIABLE}={value!r}" in line]
    assert lines, result.stdout
    assert all(line.endswith(f"{MACHINE_VARIABLE}={value!r}: {problem}") for line in lines), lines
    assert "Traceback" not in result.stdout + result.stderr


def test_a_malformed_machine_harness_set_in_the_environment_fails_in_one_line(
    tmp_path: Path,
) -> None:
    """The variable set by hand and not module:attribute: the suite says so in one line."""
    result = run(
        "selftest",
        "--",
        "-q",
        "-rf",
        "-k",
        "TestConfiguredEngineMachine",
        cwd=tmp_path,
        env={MACHINE_VARIABLE: "machine_harness"},
        timeout=120,
    )
    assert 1 == result.code, result.stdout[-2000:] + result.stderr[-2000:]
    expected = f"{MACHINE_VARIABLE}='machine_harness': expected module:attribute"
    assert expected in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--machine-harness", "machine_harness"),
            "chimeway: error: --machine-harness 'machine_harness': expected MODULE:FACTORY "
            "(like myproject.selftest:factory)",
        ),
        (
            ("--harness", "pkg.module:"),
            "chimeway: error: --harness 'pkg.module:': expected MODULE:FACTORY "
            "(like myproject.selftest:factory)",
        ),
        (
            ("--machine-harness", MACHINE_FACTORY, "--machine-examples", "0"),
            "chimeway: error: --machine-examples must be at least 1",
        ),
    ],
)
def test_a_malformed_option_is_a_usage_error(
    invoke: Invoke, args: tuple[str, ...], message: str
) -> None:
    """A harness option that is not MODULE:FACTORY is refused before pytest starts: exit 2."""
    result = invoke("selftest", *args)
    assert 2 == result.code
    assert [message] == result.stderr_lines


@pytest.mark.parametrize(
    ("pytest_args", "says"),
    [
        (("--", "--no-such-flag"), "pytest refused the arguments passed to it: --no-such-flag"),
        (("no_such_file.py",), "pytest refused the arguments passed to it: no_such_file.py"),
        (("--", "-k", "no_test_is_named_so"), "no test ran"),
    ],
    ids=["unknown flag", "missing file", "nothing selected"],
)
def test_selftest_arguments_pytest_refuses_are_a_usage_error(
    pytest_args: tuple[str, ...], says: str, tmp_path: Path
) -> None:
    """pytest's usage error (4) and "no tests ran" (5) are exit 2, not "a test failed"."""
    result = run("selftest", *pytest_args, cwd=tmp_path)
    assert 2 == result.code, result.stderr
    assert result.stderr_lines[-1].startswith(f"chimeway selftest: error: {says}")
    assert "Traceback" not in result.stderr
