"""Tests of the benchmarks' scripts (bench/), which are a folder of scripts, not a package."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


def load_bench_module(name: str) -> ModuleType:
    """``bench/<name>.py`` imported as the scripts import each other: bench/ on ``sys.path``.

    The folder stays on the path for the module's own imports of its siblings
    (``import _charts``) made later, as when bench/run.py runs.
    """
    if str(BENCH_DIR) not in sys.path:
        sys.path.append(str(BENCH_DIR))
    return importlib.import_module(name)
