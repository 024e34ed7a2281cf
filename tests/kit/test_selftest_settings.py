"""The shipped selftest reads its example counts when a test runs, and names a bad one in a line.

``tests/cli/test_selftest.py`` runs the suite through the command line;
these tests cover the two example-count variables on their own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from chimeway_core.testing import selftest

BAD_COUNTS = ["abc", "0", "-3", "²", "", "1.5"]
PYTEST = (sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider")


@pytest.mark.parametrize("value", ["abc", "0", "-3", "²"])
def test_a_bad_examples_variable_fails_one_test_in_one_line(value: str, tmp_path: Path) -> None:
    """A bad CHIMEWAY_SELFTEST_EXAMPLES: the module collects; the machine test says why it fails."""
    env = dict(os.environ, CHIMEWAY_SELFTEST_EXAMPLES=value)
    result = subprocess.run(
        [*PYTEST, "--pyargs", "chimeway_core.testing.selftest", "-k", "TestEngineMachine"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
        check=False,
    )
    assert 1 == result.returncode, result.stdout[-2000:] + result.stderr[-2000:]
    assert "1 failed" in result.stdout
    expected = f"CHIMEWAY_SELFTEST_EXAMPLES={value!r}: expected a whole number >= 1"
    assert expected in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("value", BAD_COUNTS)
def test_a_bad_machine_examples_variable_fails_in_one_line(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CHIMEWAY_SELFTEST_MACHINE_EXAMPLES=² is the same one-line failure, not a ValueError."""
    monkeypatch.setenv(
        selftest.MACHINE_HARNESS_VARIABLE, "chimeway_core.testing.stateful:machine_on"
    )
    monkeypatch.setenv(selftest.MACHINE_EXAMPLES_VARIABLE, value)
    expected = f"CHIMEWAY_SELFTEST_MACHINE_EXAMPLES={value!r}: expected a whole number >= 1"
    with pytest.raises(pytest.fail.Exception, match=expected):
        selftest.TestConfiguredEngineMachine().test_invariants_hold_on_your_backend()


@pytest.mark.parametrize("value", BAD_COUNTS)
def test_a_bad_examples_variable_fails_the_machine_test(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The memory machine reads CHIMEWAY_SELFTEST_EXAMPLES when it runs and fails in one line."""
    monkeypatch.setenv(selftest.EXAMPLES_VARIABLE, value)
    expected = f"CHIMEWAY_SELFTEST_EXAMPLES={value!r}: expected a whole number >= 1"
    with pytest.raises(pytest.fail.Exception, match=expected):
        selftest.TestEngineMachine().runTest()


def test_a_good_examples_variable_runs_that_many(tmp_path: Path) -> None:
    """CHIMEWAY_SELFTEST_EXAMPLES=2 runs the memory machine, and it passes."""
    result = subprocess.run(
        [*PYTEST, "--pyargs", "chimeway_core.testing.selftest", "-k", "TestEngineMachine"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=dict(os.environ, CHIMEWAY_SELFTEST_EXAMPLES=" 2 "),
        timeout=300,
        check=False,
    )
    assert 0 == result.returncode, result.stdout[-2000:] + result.stderr[-2000:]
    assert "1 passed" in result.stdout
