"""Adapters that run chimeway deliveries on a job queue, one package per queue.

``chimeway_backends.rq``, ``chimeway_backends.celery`` and
``chimeway_backends.dramatiq`` need their extras and import them lazily; each
registers in the ``chimeway.backends`` entry-point group, where ``chimeway
worker --backend`` finds it. The embedded default queue is the core's own,
:mod:`chimeway_core.memory`; ``chimeway_backends.memory`` still imports it,
for code written before.

What the adapters' ``__init__`` modules share is here: :func:`require` (the
extra's modules, or one clear error) and :class:`LazyExports` (the public
names, imported from their modules on first use, PEP 562). Neither imports
anything of chimeway's core, so neither does an app module that reads one
name (``from chimeway_backends.celery import beat_schedule``), nor the
``celery`` command's hook.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping, Sequence


def require(extra: str, feature: str, *modules: str) -> None:
    """Import ``modules``, or raise :class:`~chimeway_core.errors.MissingExtraError` for ``extra``.

    Checked when an adapter package is imported, so a missing extra is one
    error naming the ``pip install`` line, not an ImportError deep inside.
    """
    try:
        for module in modules:
            importlib.import_module(module)
    except ImportError as error:
        # Only on failure: an adapter package imports nothing of the core.
        from chimeway_core.errors import MissingExtraError  # noqa: PLC0415

        raise MissingExtraError(extra, feature=feature) from error


class LazyExports:
    """The ``__getattr__`` and ``__dir__`` of ``package``, given each name's home module."""

    def __init__(self, package: str, homes: Mapping[str, str], public: Sequence[str]) -> None:
        self._package = package
        self._homes = dict(homes)
        self._public = tuple(public)

    def get(self, name: str) -> object:
        """The value of ``name``, imported from its home and kept on the package for next time.

        Raises :class:`AttributeError`, as a module does, for a name the package
        does not export.
        """
        home = self._homes.get(name)
        if home is None:
            raise AttributeError(f"module {self._package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{self._package}.{home}"), name)
        setattr(sys.modules[self._package], name, value)
        return value

    def names(self) -> list[str]:
        """What ``dir(package)`` lists: what it holds now and every exported name."""
        return sorted({*vars(sys.modules[self._package]), *self._public})
