"""The Python examples in the docs run: a page whose example breaks fails this test."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGES = ["engine.md"]


def _blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(encoding="utf-8"), re.S)


@pytest.mark.parametrize("page", PAGES)
def test_page_examples_run_in_order(page: str) -> None:
    """Every python block of the page runs, in order, in one namespace."""
    blocks = _blocks(page)
    assert blocks
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, f"docs/{page}", "exec"), namespace)
    namespace["store"].engine.dispose()  # type: ignore[attr-defined]
