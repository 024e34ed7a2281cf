"""The argument parser: argparse, with errors as one line instead of usage and exit."""

from __future__ import annotations

import argparse
import math
import sys
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Final, NoReturn, TypeAlias

from chimeway_core.cli.errors import CliError, ExitCode

__all__ = [
    "Handler",
    "Parser",
    "Subparsers",
    "age",
    "ago",
    "command",
    "delivery_id",
    "listen_address",
]

#: What a command runs: the parsed options in, the exit code out.
Handler: TypeAlias = Callable[[argparse.Namespace], int]

_PROG: Final = "command_prog"
#: The largest whole number an option takes (a 32-bit signed int): every count
#: and size chimeway takes fits, and a larger one overflowed the database's.
LARGEST_INT: Final = 2**31 - 1
_AGE_UNITS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class Parser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` whose errors raise :class:`CliError`.

    argparse prints the usage and a message on two or more lines and exits;
    scripts and humans get one line instead, pointing at ``--help``.
    """

    def error(self, message: str) -> NoReturn:
        """Raise the usage error as a :class:`CliError`."""
        raise CliError(f"{message} (see '{self.prog} --help')", ExitCode.USAGE, prog=self.prog)

    def parse_command(self, args: Sequence[str] | None = None) -> argparse.Namespace:
        """Parse ``args`` like ``parse_args``, but report unknown arguments as the command's.

        argparse leaves them to the top-level parser, whose error would start
        with ``chimeway:`` rather than ``chimeway demo:``.
        """
        argv = sys.argv[1:] if args is None else list(args)
        for position, arg in enumerate(argv, 1):
            if not _is_utf8(arg):
                raise CliError(
                    f"argument {position} is not valid UTF-8 (see '{self.prog} --help')",
                    ExitCode.USAGE,
                    prog=self.prog,
                )
        namespace, extras = self.parse_known_args(argv)
        if extras:
            prog = getattr(namespace, _PROG, self.prog)
            if _before_the_command(extras[0], argv, prog):
                prog = self.prog
            raise CliError(
                f"unrecognized arguments: {' '.join(extras)} (see '{prog} --help')",
                ExitCode.USAGE,
                prog=prog,
            )
        _check_whole_numbers(namespace, getattr(namespace, _PROG, self.prog))
        return namespace


def _is_utf8(arg: str) -> bool:
    # Python decodes argv with surrogateescape: bytes that are not UTF-8
    # arrive as lone surrogates, which no output stream can encode.
    try:
        arg.encode()
    except UnicodeEncodeError:
        return False
    return True


def _check_whole_numbers(namespace: argparse.Namespace, prog: str) -> None:
    """Refuse any whole-number option beyond :data:`LARGEST_INT` either way."""
    for dest, value in vars(namespace).items():
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > LARGEST_INT:
            option = "--" + dest.replace("_", "-")
            raise CliError(
                f"argument {option}: too large (at most {LARGEST_INT} either way) "
                f"(see '{prog} --help')",
                ExitCode.USAGE,
                prog=prog,
            )


def _before_the_command(extra: str, argv: list[str], prog: str) -> bool:
    """Whether ``extra`` came before the command's name (``chimeway --bogus demo``).

    The program's own options come first, so such an argument is the
    program's, not the command's.
    """
    command = prog.split()[1:2]
    if not command or command[0] not in argv or extra not in argv:
        return False
    return argv.index(extra) < argv.index(command[0])


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
    parser.set_defaults(handler=handler, **{_PROG: parser.prog})
    return parser


def delivery_id(text: str) -> uuid.UUID:
    """An argument type: a delivery id (a UUID)."""
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a delivery id (a UUID)") from None


def age(text: str) -> float:
    """An argument type: ``30d``, ``12h``, ``15m``, ``90s`` or a number of seconds, as seconds."""
    number, unit = (text[:-1], text[-1]) if text[-1:] in _AGE_UNITS else (text, "s")
    try:
        value = float(number) * _AGE_UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an age (seconds, or a number with s, m, h or d)"
        ) from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"an age must be finite and > 0, got {text!r}")
    return value


def ago(now: datetime, seconds: float, option: str) -> datetime:
    """``now`` less an :func:`age` given as ``option``; a :class:`CliError` before the year 1."""
    try:
        return now - timedelta(seconds=seconds)
    except OverflowError:
        raise CliError(f"{option} reaches before the year 1: {seconds:g} s") from None


def listen_address(text: str) -> tuple[str, int]:
    """An argument type: ``PORT`` (on 127.0.0.1), ``HOST:PORT`` or ``[IPv6]:PORT``.

    Port 0 asks the system for a free one. ``:PORT`` is refused: other tools
    read it as every interface, so it is spelled ``0.0.0.0:PORT`` here. An
    IPv6 host goes in brackets, as in a URL.
    """
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise argparse.ArgumentTypeError(
            f"{text!r}: an IPv6 host goes in brackets, like [::1]:{port or 'PORT'}"
        )
    if not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an address to listen on: PORT, HOST:PORT or [IPv6]:PORT"
        )
    if sep and not host:
        raise argparse.ArgumentTypeError(
            f"{text!r} names no host: write 0.0.0.0:{port} (or [::]:{port}) for every interface"
        )
    return (host if sep else "127.0.0.1"), int(port)
