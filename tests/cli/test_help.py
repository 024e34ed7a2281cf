"""``--help`` on every command, and ``--version``."""

from __future__ import annotations

import argparse

import pytest

from chimeway_core.cli import build_parser
from tests.cli.conftest import Invoke

COMMANDS = [
    (),
    ("demo",),
    ("table",),
    ("inspect",),
    ("metrics",),
    ("list",),
    ("show",),
    ("cancel",),
    ("worker",),
    ("relay",),
    ("rescue",),
    ("prune",),
    ("resend",),
    ("db",),
    ("db", "upgrade"),
    ("db", "check"),
    ("selftest",),
    ("web",),
]


def _commands(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> set[tuple[str, ...]]:
    found = {prefix}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found |= _commands(sub, (*prefix, name))
    return found


def test_every_command_is_covered() -> None:
    """The list below names every command the parser has."""
    assert set(COMMANDS) == _commands(build_parser())


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "chimeway")
def test_help(command: tuple[str, ...], invoke: Invoke) -> None:
    """--help prints the command's usage on stdout and exits 0."""
    result = invoke(*command, "--help")
    assert (0, "") == (result.code, result.stderr)
    assert result.stdout.startswith(f"usage: {' '.join(('chimeway', *command))}")


def test_help_documents_the_exit_codes_and_environment(invoke: Invoke) -> None:
    """The top-level help lists the environment variables and every exit code."""
    result = invoke("--help")
    for text in (
        "CHIMEWAY_DATABASE_URL",
        "CHIMEWAY_REDIS_URL",
        "CHIMEWAY_BROKER_URL",
        "0  ok",
        "1  the command ran and found a problem",
        "2  usage or configuration error",
        "3  a service (the database, Redis, the broker) is unreachable",
    ):
        assert text in result.stdout


def test_version(invoke: Invoke) -> None:
    """--version prints the distribution's version."""
    result = invoke("--version")
    assert 0 == result.code
    assert result.stdout.startswith("chimeway ")
