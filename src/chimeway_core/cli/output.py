"""Plain-text tables and JSON for the command line's output.

Failing to write stdout (a full disk, ``> /dev/full``) is an
:class:`OutputError`, one line on stderr like every other failure; a reader
that went away (``| head``) stays a :class:`BrokenPipeError`, which
:func:`chimeway_core.cli.main` ends quietly.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Collection, Iterable, Sequence
from datetime import datetime
from typing import Any

from chimeway_core.cli.errors import CliError, ExitCode

__all__ = ["OutputError", "counted", "echo", "format_table", "iso", "print_json", "warn"]


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
    """Write lines (strings or iterables of strings) to stdout, and flush.

    Raises :class:`OutputError` when stdout cannot be written.
    """
    try:
        for item in lines:
            for line in [item] if isinstance(item, str) else item:
                sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as error:
        raise OutputError(
            f"cannot write the output: {error.strerror or error}", ExitCode.PROBLEM
        ) from None


def warn(line: str) -> None:
    """Write one line to stderr."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def print_json(value: Any) -> None:
    """Write ``value`` as indented JSON to stdout."""
    echo(json.dumps(value, indent=2, ensure_ascii=False))
