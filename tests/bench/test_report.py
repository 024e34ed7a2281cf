"""bench/_report.py: how a target's measured ratio is shown next to its goal."""

from __future__ import annotations

import pytest

from tests.bench import load_bench_module

_report = load_bench_module("_report")


@pytest.mark.parametrize(
    ("ratio", "goal", "met", "shown"),
    [
        (0.7578, ">= 0.75", True, "0.76"),
        (0.7496, ">= 0.75", False, "0.7496"),
        (0.74996, ">= 0.75", False, "0.74996"),
        (5.004, "<= 5", False, "5.004"),
        (3.005, "<= 3 + 1/200", True, "3.00"),
    ],
)
def test_a_ratio_never_reads_as_on_the_other_side_of_its_line(
    ratio: float, goal: str, met: bool, shown: str
) -> None:
    """Two decimals, or as many more as it takes for the figure to agree with the verdict."""
    assert shown == _report._measured({"ratio": ratio, "goal": goal, "met": met})
