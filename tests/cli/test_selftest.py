"""``chimeway selftest`` runs the shipped property suite against the installed library."""

from __future__ import annotations

import subprocess

from tests.cli.conftest import COMMAND


def test_selftest_passes_against_this_installation() -> None:
    """The shipped suite passes, and says how many tests it ran."""
    result = subprocess.run(
        [*COMMAND, "selftest", "--examples", "10", "--", "-q"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert 0 == result.returncode, result.stdout[-2000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
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
