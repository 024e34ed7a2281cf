"""Plain-text tables and JSON for the command line's output.

Every line written is made printable first (:func:`printable`): a recipient,
a key, an error or a provider's text is data from outside, and written raw
an escape sequence in it could clear the operator's screen, or a newline
forge a line such as ``status succeeded``. JSON output escapes the same
characters the JSON way.

Failing to write stdout (a full disk, ``> /dev/full``) is an
:class:`OutputError`, one line on stderr like every other failure; a reader
that went away (``| head``) stays a :class:`BrokenPipeError`, which
:func:`chimeway_core.cli.main` ends quietly.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Collection, Iterable, Sequence
from datetime import datetime
from typing import Any

from chimeway_core.cli.errors import CliError, ExitCode

__all__ = [
    "OutputError",
    "counted",
    "echo",
    "format_table",
    "iso",
    "print_json",
    "printable",
    "warn",
]

#: C0 controls but tab, DEL, C1 controls (8-bit CSI among them), the
#: invisible direction marks and overrides that reorder what a line shows, and
#: lone surrogates (undecodable bytes, which no output stream can encode).
_UNPRINTABLE = re.compile(
    "[\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


#: What json.dumps(ensure_ascii=False) leaves raw of that set (it escapes C0 controls itself).
_RAW_IN_JSON = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with every control character written as its escape (``\\x1b``, ``\\u202e``)."""
    return _UNPRINTABLE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


class OutputError(CliError):
    """Writing the command's output to stdout failed."""


def format_table(
    rows: Sequence[Sequence[str]], *, right: Collection[int] = (), indent: int = 0
) -> list[str]:
    """Align ``rows`` (the first is the header) in columns two spaces apart.

    Columns whose index is in ``right`` are right-aligned (numbers).
    Trailing spaces are stripped.
    """
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(width) if index in right else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append((" " * indent + "  ".join(cells)).rstrip())
    return lines


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``count`` and ``noun``, in the plural (``plural``, or ``noun`` + "s") unless it is 1."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def iso(value: datetime | None) -> str | None:
    """``value`` in ISO 8601, or ``None``."""
    return None if value is None else value.isoformat()


def echo(*lines: str | Iterable[str]) -> None:
    """Write lines (strings or iterables of strings) to stdout, each made printable, and flush.

    A line is one line: a newline inside it is written as ``\\n``.
    Raises :class:`OutputError` when stdout cannot be written.
    """
    _write(
        printable(line) for item in lines for line in ([item] if isinstance(item, str) else item)
    )


def _write(lines: Iterable[str]) -> None:
    try:
        for line in lines:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as error:
        raise OutputError(
            f"cannot write the output: {error.strerror or error}", ExitCode.PROBLEM
        ) from None


def warn(line: str) -> None:
    """Write one line to stderr, made printable."""
    sys.stderr.write(printable(line) + "\n")
    sys.stderr.flush()


def print_json(value: Any) -> None:
    """Write ``value`` as indented JSON to stdout; control characters are ``\\u`` escapes."""
    # Not ensure_ascii: it would escape every non-ASCII letter as well.
    _write([_RAW_IN_JSON.sub(_json_escape, json.dumps(value, indent=2, ensure_ascii=False))])
