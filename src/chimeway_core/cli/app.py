"""``--app``: the application's engine, found by :func:`chimeway_core.loading.load_engine`.

Every way loading can fail becomes one :class:`~chimeway_core.cli.errors.CliError`
line naming the problem, never a traceback.
"""

from __future__ import annotations

from chimeway_core import loading
from chimeway_core.cli.errors import CliError
from chimeway_core.engine import Chimeway
from chimeway_core.errors import EngineNotFoundError

__all__ = ["load_engine"]


def load_engine(spec: str) -> Chimeway:
    """Import ``module:attribute`` and return the engine it names, or raise :class:`CliError`."""
    try:
        return loading.load_engine(spec)
    except EngineNotFoundError as error:
        raise CliError(f"--app {spec}: {error.problem}") from None
