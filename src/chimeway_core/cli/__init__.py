"""The ``chimeway`` command line: the demo, workers, the rescuer and the ledger.

One module per command group (:mod:`~chimeway_core.cli.demo`,
:mod:`~chimeway_core.cli.ledger`, :mod:`~chimeway_core.cli.workers`,
:mod:`~chimeway_core.cli.db`, :mod:`~chimeway_core.cli.table`); each
registers its commands on the parser built here. :func:`main` turns every
:class:`~chimeway_core.cli.errors.CliError` into one line on stderr and its
:class:`~chimeway_core.cli.errors.ExitCode`: 0 ok, 1 the command found a
problem, 2 usage or configuration error, 3 a service unreachable.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from sqlalchemy.exc import DBAPIError

from chimeway_core.cli import db, demo, ledger, metrics, selftest, table, web, workers
from chimeway_core.cli.config import database_failure
from chimeway_core.cli.errors import CliError, ExitCode
from chimeway_core.cli.output import OutputError, warn
from chimeway_core.cli.parser import Parser

__all__ = ["CliError", "ExitCode", "build_parser", "main"]

_EPILOG = """\
environment:
  CHIMEWAY_DATABASE_URL  the database when --db is not given (not read by the demo)
  CHIMEWAY_REDIS_URL     the Redis URL when --redis-url is not given
  CHIMEWAY_BROKER_URL    the broker URL when --broker-url is not given
  CHIMEWAY_APP           the engine of worker, relay, rescue, prune, resend when --app
                         is not given
  CHIMEWAY_WEB_TOKEN     the web console's token when --token is not given

exit status:
  0  ok
  1  the command ran and found a problem
  2  usage or configuration error
  3  a service (the database, Redis, the broker) is unreachable"""


def _version() -> str:
    try:
        return version("chimeway")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> Parser:
    """The ``chimeway`` parser with every command."""
    parser = Parser(
        prog="chimeway",
        description="Reliable notification delivery: the demo, workers and the ledger.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"chimeway {_version()}")
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    commands.required = True
    demo.register(commands)
    table.register(commands)
    ledger.register(commands)
    metrics.register(commands)
    workers.register(commands)
    db.register(commands)
    selftest.register(commands)
    web.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``chimeway`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_command(argv)
        return int(args.handler(args))
    except OutputError as error:
        warn(error.line())
        _silence_stdout()
        return int(error.code)
    except CliError as error:
        warn(error.line())
        return int(error.code)
    except DBAPIError as error:
        # The database went away, or refused, in the middle of a command.
        failure = database_failure(error)
        warn(failure.line())
        return int(failure.code)
    except SystemExit as exit_:  # --help and --version
        return exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    except KeyboardInterrupt:
        warn("chimeway: interrupted")
        return 130
    except BrokenPipeError:
        # The reader went away (``chimeway inspect | head``): stop quietly.
        _silence_stdout()
        return int(ExitCode.PROBLEM)


def _silence_stdout() -> None:
    # What is left in stdout's buffer would fail again when Python flushes it
    # at exit, with a complaint of its own.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
