"""Exit codes and the one error the command line raises.

Every failure a user can cause — a bad option, an unreachable database, an
``--app`` that does not import — becomes a :class:`CliError`, which
:func:`chimeway_core.cli.main` prints as one line on stderr before exiting
with its :class:`ExitCode`. Scripts can rely on the codes.
"""

from __future__ import annotations

import enum

from chimeway_core.errors import ChimewayError

__all__ = ["CliError", "ExitCode"]


class ExitCode(enum.IntEnum):
    """What ``chimeway`` exits with."""

    OK = 0
    """The command did what it was asked."""
    PROBLEM = 1
    """The command ran and found a problem (a delivery not terminal, not found, not cancellable)."""
    USAGE = 2
    """Usage or configuration error: a bad option, URL, ``--app`` path or backend."""
    UNREACHABLE = 3
    """A service (the database) could not be reached."""


class CliError(ChimewayError):
    """A failure reported as one line on stderr and an exit code; never a traceback.

    ``prog`` is what the line starts with (``chimeway``, or ``chimeway
    worker`` for an option error of that command). A
    :class:`~chimeway_core.errors.ChimewayError`, like everything chimeway
    raises on purpose; :func:`chimeway_core.cli.main` catches it before
    anything else.
    """

    def __init__(
        self, message: str, code: ExitCode = ExitCode.USAGE, *, prog: str = "chimeway"
    ) -> None:
        self.message = " ".join(message.split())  # one line, whatever it quotes
        self.code = code
        self.prog = prog
        super().__init__(self.message)

    def line(self) -> str:
        """The line printed on stderr."""
        return f"{self.prog}: error: {self.message}"
