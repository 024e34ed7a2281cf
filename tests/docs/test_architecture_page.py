"""docs/architecture.md names each module once, and every module it names exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "architecture.md"
#: A module or package path in code, on the page or in its Mermaid drawing.
MODULE = re.compile(
    r"(?:`|<code>)((?:chimeway_backends/)?[a-z_]+(?:/[a-z_]+)*(?:\.py|/))(?:`|</code>)"
)
#: The folder the page's paths are relative to, unless they name chimeway_backends.
BASE = "src/chimeway_core/"


def _named() -> list[str]:
    return [path for path in MODULE.findall(PAGE.read_text(encoding="utf-8")) if path != BASE]


def test_each_module_is_named_once() -> None:
    """A module's name appears once on the page, so a move is corrected in one place."""
    named = _named()
    assert len(named) > 20  # the drawing and the table name their modules this way
    assert [] == sorted({path for path in named if named.count(path) > 1})


def test_every_named_module_exists() -> None:
    """Each path the page names is a module or package of the source tree."""
    if not (ROOT / BASE / "ledger").is_dir():
        pytest.skip("the page draws issue 24's layout (chimeway_core/ledger/...), not merged yet")
    missing = [
        path
        for path in _named()
        if not (
            ROOT / "src" / path if path.startswith("chimeway_backends/") else ROOT / BASE / path
        ).exists()
    ]
    assert [] == missing
