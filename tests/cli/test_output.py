"""The command line's output helpers: counts in words."""

from __future__ import annotations

import pytest

from chimeway_core.cli.output import counted


@pytest.mark.parametrize(
    ("count", "words", "expected"),
    [
        (0, ("row",), "0 rows"),
        (1, ("row",), "1 row"),
        (2, ("lost attempt",), "2 lost attempts"),
        (1, ("copy", "copies"), "1 copy"),
        (3, ("copy", "copies"), "3 copies"),
    ],
)
def test_counted_says_one_in_the_singular_and_every_other_count_in_the_plural(
    count: int, words: tuple[str, ...], expected: str
) -> None:
    assert expected == counted(count, *words)
