"""Finding the application's engine from an import path, the way ``celery -A`` finds an app.

``myapp.notify:engine`` imports ``myapp.notify`` and takes its ``engine``
attribute (a dotted attribute path is followed: ``module:holder.engine``).
The attribute is a :class:`~chimeway_core.engine.Chimeway` or a zero-argument
callable returning one. Workers of every backend and the command line find
the engine this way — never from process-global state set by hand.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from types import ModuleType
from typing import Final

from chimeway_core.engine import Chimeway
from chimeway_core.errors import EngineNotFoundError

__all__ = ["APP_VARIABLE", "load_engine"]

#: The environment variable a worker reads its engine's import path from.
APP_VARIABLE: Final = "CHIMEWAY_APP"


def _describe(error: BaseException) -> str:
    """``Type: first line of the message (file:line)`` of the innermost frame."""
    text = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    frames = traceback.extract_tb(error.__traceback__)
    where = f" ({os.path.basename(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""
    name = type(error).__qualname__
    return f"{name}: {text}{where}" if text else f"{name}{where}"


def _import(path: str, module_name: str) -> ModuleType:
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)  # as celery -A does: a module beside the shell is found
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if module_name == missing or module_name.startswith(f"{missing}."):
            raise EngineNotFoundError(
                path, f"no module named {missing!r} (is its directory on PYTHONPATH?)"
            ) from None
        raise EngineNotFoundError(
            path, f"importing {module_name!r} failed: {_describe(error)}"
        ) from error
    except (Exception, SystemExit) as error:
        raise EngineNotFoundError(
            path, f"importing {module_name!r} raised {_describe(error)}"
        ) from error


def load_engine(target: Chimeway | str | None = None) -> Chimeway:
    """Resolve ``target`` to an engine, or raise :class:`EngineNotFoundError`.

    ``target`` is an engine (returned as it is), an import path
    ``module:attribute``, or ``None`` to read the path from ``CHIMEWAY_APP``.
    The error's ``problem`` names what went wrong in one line: a malformed
    path, a module that does not import (and where it raised), a missing
    attribute, a value that is not an engine, a factory that raised.
    """
    if isinstance(target, Chimeway):
        return target
    if target is not None and not isinstance(target, str):
        raise TypeError(
            f"target must be a Chimeway, a 'module:attribute' str or None, "
            f"not {type(target).__name__}"
        )
    path = target if target is not None else os.environ.get(APP_VARIABLE) or None
    if path is None:
        raise EngineNotFoundError(None, f"pass module:attribute or set {APP_VARIABLE}")
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise EngineNotFoundError(path, "expected module:attribute (like myapp.notify:engine)")
    found: object = _import(path, module_name)
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise EngineNotFoundError(
                path, f"module {module_name!r} has no attribute {attribute!r}"
            ) from None
    if isinstance(found, Chimeway):
        return found
    if not callable(found):
        raise EngineNotFoundError(
            path,
            f"{attribute} is a {type(found).__qualname__}, not a Chimeway engine "
            "or a zero-argument callable returning one",
        )
    try:
        made = found()
    except (Exception, SystemExit) as error:
        raise EngineNotFoundError(
            path, f"calling {attribute}() raised {_describe(error)}"
        ) from error
    if not isinstance(made, Chimeway):
        raise EngineNotFoundError(
            path, f"{attribute}() returned a {type(made).__qualname__}, not a Chimeway engine"
        )
    return made
