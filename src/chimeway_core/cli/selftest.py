"""``chimeway selftest``: run chimeway's own property suite against the installed library."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from importlib.util import find_spec
from typing import Final

from chimeway_core.cli.errors import CliError, ExitCode
from chimeway_core.cli.parser import Subparsers, command

__all__ = ["register", "run"]

_DESCRIPTION: Final = """\
Run the property suite chimeway runs on itself against this installation:
the dispatch table over its whole product space, the backend conformance suite
on the in-memory backend (and on your backend when CHIMEWAY_SELFTEST_HARNESS
names a module:factory returning a harness), and the stateful model test of
the whole engine on the in-memory backend (and on your backend when
CHIMEWAY_SELFTEST_MACHINE_HARNESS names a module:factory opening a machine
harness). With --app, both of those also run on your application as it is
configured: its backend's kind on a scratch queue of its queue service and
its database in a scratch namespace, each test's removed at its end; no
harness of yours needed. Needs the testing extra: pip install "chimeway[testing]".
Arguments after -- go to pytest.

exit status: 0 every test passed, 1 a test failed, 2 a bad option, missing
extra, or arguments pytest refused or that selected no test."""

# pytest's own exit codes (pytest.ExitCode, not imported: pytest may be missing).
_PYTEST_USAGE: Final = 4
_PYTEST_NO_TESTS: Final = 5


def register(subparsers: Subparsers) -> None:
    """Add ``chimeway selftest``."""
    parser = command(subparsers, "selftest", run, "Run chimeway's property suite here.")
    parser.description = _DESCRIPTION
    parser.add_argument(
        "--examples",
        type=int,
        default=200,
        help="examples for the stateful engine test (default 200)",
    )
    parser.add_argument(
        "--app",
        metavar="MODULE:ATTRIBUTE",
        help="also run the conformance suite and the real-time stateful test on this "
        "application's backend and database (scratch queue and namespace)",
    )
    parser.add_argument(
        "--harness",
        metavar="MODULE:FACTORY",
        help="also run the conformance suite on the harness this factory returns",
    )
    parser.add_argument(
        "--machine-harness",
        metavar="MODULE:FACTORY",
        help="also run the real-time stateful engine test on the machine harness "
        "this factory opens",
    )
    parser.add_argument(
        "--machine-examples",
        type=int,
        metavar="N",
        default=None,
        help="examples for the stateful test on --machine-harness (default 20; "
        "each costs real seconds)",
    )
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER, help="passed to pytest")


def run(args: argparse.Namespace) -> int:
    """Run the suite with pytest; return pytest's exit code mapped onto ours."""
    # Only look for hypothesis: importing it before pytest starts would keep
    # pytest from rewriting its plugin's asserts.
    missing = [name for name in ("pytest", "hypothesis") if find_spec(name) is None]
    if missing:
        raise CliError(
            f'selftest needs {", ".join(missing)}: pip install "chimeway[testing]"',
            ExitCode.USAGE,
        )
    if args.examples < 1:
        raise CliError("--examples must be at least 1", ExitCode.USAGE)
    if args.machine_examples is not None and args.machine_examples < 1:
        raise CliError("--machine-examples must be at least 1", ExitCode.USAGE)
    env = dict(os.environ, CHIMEWAY_SELFTEST_EXAMPLES=str(args.examples))
    for option, variable, value in (
        ("--app", "CHIMEWAY_SELFTEST_APP", args.app),
        ("--harness", "CHIMEWAY_SELFTEST_HARNESS", args.harness),
        ("--machine-harness", "CHIMEWAY_SELFTEST_MACHINE_HARNESS", args.machine_harness),
    ):
        if value is not None:
            _check_path(option, value)
            env[variable] = value
    if args.machine_examples is not None:
        env["CHIMEWAY_SELFTEST_MACHINE_EXAMPLES"] = str(args.machine_examples)
    extra = [a for a in args.pytest_args if a != "--"]
    # A fresh interpreter: pytest must import (and may rewrite) chimeway_core
    # itself, and the suite runs with its own settings, not those of the
    # project the command is started in.
    command = [
        sys.executable,
        "-m",
        "pytest",
        "--pyargs",
        "chimeway_core.testing.selftest",
        "-p",
        "no:cacheprovider",
        "-c",
        os.devnull,
        "--rootdir",
        os.getcwd(),
        *extra,
    ]
    code = subprocess.run(command, env=env, check=False).returncode  # noqa: S603 - our own argv
    if code == _PYTEST_USAGE:
        raise CliError(
            f"pytest refused the arguments passed to it: {' '.join(extra)} (its message is above)",
            prog="chimeway selftest",
        )
    if code == _PYTEST_NO_TESTS:
        raise CliError(
            f"no test ran: the arguments passed to pytest selected none ({' '.join(extra)})",
            prog="chimeway selftest",
        )
    return ExitCode.OK if code == 0 else ExitCode.PROBLEM


def _check_path(option: str, value: str) -> None:
    """Refuse a value that is not ``module:attribute`` before starting pytest.

    Whether it imports is for the suite to find out, in the interpreter that
    runs the tests (it reports that in one line too).
    """
    module_name, sep, attribute = value.partition(":")
    if not sep or not module_name.strip() or not attribute.strip():
        raise CliError(
            f"{option} {value!r}: expected "
            + (
                "MODULE:ATTRIBUTE (like myapp.notify:engine)"
                if option == "--app"
                else "MODULE:FACTORY (like myproject.selftest:factory)"
            ),
            ExitCode.USAGE,
        )
