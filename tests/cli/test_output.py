"""The command line's output helpers: counts in words."""

from __future__ import annotations

import argparse

import pytest

from chimeway_core import cli
from chimeway_core.cli import main
from chimeway_core.cli.errors import CliError, ExitCode
from chimeway_core.cli.output import OutputError, counted
from chimeway_core.errors import ChimewayError


@pytest.mark.parametrize(
    ("count", "words", "expected"),
    [
        (0, ("row",), "0 rows"),
        (1, ("row",), "1 row"),
        (2, ("lost attempt",), "2 lost attempts"),
        (1, ("copy", "copies"), "1 copy"),
        (3, ("copy", "copies"), "3 copies"),
    ],
)
def test_counted_says_one_in_the_singular_and_every_other_count_in_the_plural(
    count: int, words: tuple[str, ...], expected: str
) -> None:
    assert expected == counted(count, *words)


def test_a_cli_error_is_a_chimeway_error_that_main_prints_as_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """CliError and OutputError are ChimewayErrors; main() still prints one line and its code."""
    assert issubclass(CliError, ChimewayError)
    assert issubclass(OutputError, CliError)

    def fail(args: argparse.Namespace) -> int:
        raise CliError("the database\nis not there", ExitCode.UNREACHABLE)

    class Parser:
        def parse_command(self, argv: object) -> argparse.Namespace:
            return argparse.Namespace(handler=fail)

    monkeypatch.setattr(cli, "build_parser", Parser)
    assert ExitCode.UNREACHABLE == main([])
    assert ("", "chimeway: error: the database is not there\n") == capsys.readouterr()
