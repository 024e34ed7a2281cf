"""``chimeway table``: the dispatch table, as the engine applies it."""

from __future__ import annotations

import argparse
from typing import Final

from chimeway_core.cli.errors import ExitCode
from chimeway_core.cli.output import echo, format_table, print_json
from chimeway_core.cli.parser import Subparsers, command
from chimeway_core.render import dispatch_table_rows

__all__ = ["JSON_KEYS", "register", "run"]

#: The keys of each row in ``--json`` output, in the column order of the text table.
JSON_KEYS: Final = ("row", "outcome", "error_class", "status", "attempt", "action")

_DESCRIPTION: Final = """\
Print the dispatch table: for the shape of a recorded attempt (outcome, error
class, the delivery's status after recording, the attempt relative to
max_attempts), the action the job takes. The first matching row wins; the
catch-all rows come last."""


def register(subparsers: Subparsers) -> None:
    """Add ``chimeway table``."""
    parser = command(subparsers, "table", run, "Print the dispatch table.")
    parser.description = _DESCRIPTION
    parser.add_argument("--json", action="store_true", help="print the rows as a JSON list")


def run(args: argparse.Namespace) -> int:
    """Print the table."""
    header, *body = dispatch_table_rows()
    if args.json:
        print_json([dict(zip(JSON_KEYS, row, strict=True)) for row in body])
    else:
        echo(format_table([header, *body]))
    return ExitCode.OK
