"""Generated documentation pages are current: regenerate with ``python docs/generate.py``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _pages() -> dict[str, object]:
    spec = importlib.util.spec_from_file_location("docs_generate", DOCS / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.PAGES)


@pytest.mark.parametrize("name", sorted(_pages()))
def test_checked_in_page_is_current(name: str) -> None:
    """The checked-in page equals what the code renders now."""
    render = _pages()[name]
    assert callable(render)
    assert render() == (DOCS / name).read_text(encoding="utf-8"), (
        f"docs/{name} is stale: run `python docs/generate.py`"
    )
