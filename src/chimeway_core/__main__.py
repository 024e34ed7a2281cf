"""``python -m chimeway_core``: the ``chimeway`` command line."""

from __future__ import annotations

import sys

from chimeway_core.cli import main

if __name__ == "__main__":
    sys.exit(main())
