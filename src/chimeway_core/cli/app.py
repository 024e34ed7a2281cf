"""Finding the application's engine from an import path, the way ``celery -A`` finds an app.

``--app myapp.notify:engine`` imports ``myapp.notify`` and takes its
``engine`` attribute (a dotted path is followed: ``module:holder.engine``).
The attribute is a :class:`~chimeway_core.engine.Chimeway` or a
zero-argument callable returning one. The current directory is put on
``sys.path`` first, as Celery does, so a module beside the shell is found.
Every way this can fail is one :class:`~chimeway_core.cli.errors.CliError`
line naming the problem and where it was raised, never a traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from types import ModuleType

from chimeway_core.cli.errors import CliError
from chimeway_core.engine import Chimeway

__all__ = ["load_engine"]


def _describe(error: BaseException) -> str:
    """``Type: first line of the message (file:line)`` of the innermost frame."""
    text = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    frames = traceback.extract_tb(error.__traceback__)
    where = f" ({os.path.basename(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""
    name = type(error).__qualname__
    return f"{name}: {text}{where}" if text else f"{name}{where}"


def _import(spec: str, module_name: str) -> ModuleType:
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if module_name == missing or module_name.startswith(f"{missing}."):
            raise CliError(
                f"--app {spec}: no module named {missing!r} (is its directory on PYTHONPATH?)"
            ) from None
        raise CliError(
            f"--app {spec}: importing {module_name!r} failed: {_describe(error)}"
        ) from None
    except (Exception, SystemExit) as error:
        raise CliError(
            f"--app {spec}: importing {module_name!r} raised {_describe(error)}"
        ) from None


def load_engine(spec: str) -> Chimeway:
    """Import ``module:attribute`` and return the engine it names, or raise :class:`CliError`."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise CliError(f"--app must be module:attribute (like myapp.notify:engine), got {spec!r}")
    found: object = _import(spec, module_name)
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise CliError(
                f"--app {spec}: module {module_name!r} has no attribute {attribute!r}"
            ) from None
    if isinstance(found, Chimeway):
        return found
    if not callable(found):
        raise CliError(
            f"--app {spec}: {attribute} is a {type(found).__qualname__}, not a Chimeway engine "
            "or a zero-argument callable returning one"
        )
    try:
        made = found()
    except (Exception, SystemExit) as error:
        raise CliError(f"--app {spec}: calling {attribute}() raised {_describe(error)}") from None
    if not isinstance(made, Chimeway):
        raise CliError(
            f"--app {spec}: {attribute}() returned a {type(made).__qualname__}, "
            "not a Chimeway engine"
        )
    return made
