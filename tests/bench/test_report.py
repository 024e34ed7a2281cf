"""bench/_report.py: how a target's measured ratio is shown next to its goal."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

# bench/ is a folder of scripts, not a package: load the one module by its path.
_SPEC = importlib.util.spec_from_file_location(
    "chimeway_bench_report", Path(__file__).resolve().parents[2] / "bench" / "_report.py"
)
assert _SPEC is not None
assert _SPEC.loader is not None
_report = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_report)


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
