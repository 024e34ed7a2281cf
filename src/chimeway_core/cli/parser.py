"""The argument parser: argparse, with errors as one line instead of usage and exit."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NoReturn, TypeAlias

from chimeway_core.cli.errors import CliError, ExitCode

__all__ = ["Handler", "Parser", "Subparsers", "command"]

#: What a command runs: the parsed options in, the exit code out.
Handler: TypeAlias = Callable[[argparse.Namespace], int]


class Parser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` whose errors raise :class:`CliError`.

    argparse prints the usage and a message on two or more lines and exits;
    scripts and humans get one line instead, pointing at ``--help``.
    """

    def error(self, message: str) -> NoReturn:
        """Raise the usage error as a :class:`CliError`."""
        raise CliError(f"{message} (see '{self.prog} --help')", ExitCode.USAGE, prog=self.prog)


#: The object ``add_subparsers`` returns.
Subparsers: TypeAlias = "argparse._SubParsersAction[Parser]"


def command(subparsers: Subparsers, name: str, handler: Handler, summary: str) -> Parser:
    """Add the command ``name`` that runs ``handler``; ``summary`` is its one-line help."""
    parser = subparsers.add_parser(
        name,
        help=summary,
        description=summary,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=handler)
    return parser
