"""bench/run.py: which runs write over the committed results and docs/performance.md."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def run() -> Iterator[ModuleType]:
    """bench/run.py, imported as its own folder's scripts import it (bench/ on sys.path)."""
    sys.path.insert(0, str(BENCH_DIR))
    try:
        yield importlib.import_module("run")
    finally:
        sys.path.remove(str(BENCH_DIR))
        sys.modules.pop("run", None)


def test_only_a_full_run_without_an_out_of_its_own_is_committed(
    run: ModuleType, tmp_path: Path
) -> None:
    committed = BENCH_DIR / "results"
    assert (committed, True) == run.destination(smoke=False, only=None, out=None)
    assert (committed, True) == run.destination(smoke=False, only=None, out=committed)
    # A full run sent elsewhere (to compare runs) leaves docs/ alone.
    assert (tmp_path, False) == run.destination(smoke=False, only=None, out=tmp_path)
    for smoke, only in [(True, None), (False, "core")]:
        out, written = run.destination(smoke=smoke, only=only, out=None)
        assert (False, False) == (written, out.resolve() == committed.resolve())
        out.rmdir()
