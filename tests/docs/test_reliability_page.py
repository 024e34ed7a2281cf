"""docs/reliability.md names the tests that prove each guarantee: every one it names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEST_REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def test_every_test_the_page_names_exists() -> None:
    """Each `tests/....py::name` on the page is a test function, class or TestCase of that file."""
    page = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    named = TEST_REFERENCE.findall(page)
    assert len(named) > 20  # the page cites its tests this way
    missing = [
        f"{path}::{name}"
        for path, name in named
        if not (ROOT / path).is_file()
        or not re.search(
            rf"^(    )?(def {name}\(|class {name}\b|{name} = )", (ROOT / path).read_text(), re.M
        )
    ]
    assert [] == missing
