"""A module RQ jobs in the tests name, which a chimeway worker must never import or call.

Importing it touches the file ``CHIMEWAY_TEST_FOREIGN_IMPORTED`` names, and
:func:`touch` (as a job or as any callback) the one
``CHIMEWAY_TEST_FOREIGN_CALLED`` names.
"""

from __future__ import annotations

import os
from pathlib import Path


def _mark(variable: str) -> None:
    path = os.environ.get(variable)
    if path:
        Path(path).touch()


_mark("CHIMEWAY_TEST_FOREIGN_IMPORTED")


def touch(*_: object) -> None:
    """Leave the mark of a call, whatever the arguments."""
    _mark("CHIMEWAY_TEST_FOREIGN_CALLED")
