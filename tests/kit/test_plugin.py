"""The pytest plugin works as documented: docs/testing.md's example runs as a user's suite."""

from __future__ import annotations

import re
from importlib.metadata import entry_points
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

TESTING_PAGE = Path(__file__).resolve().parents[2] / "docs" / "testing.md"


def test_the_documented_example_passes(pytester: pytest.Pytester) -> None:
    """The plugin's python example in docs/testing.md (its first), run as a test file, passes."""
    example = re.findall(r"```python\n(.*?)```", TESTING_PAGE.read_text("utf-8"), re.S)[0]
    pytester.makepyfile(test_example=example)
    installed = any(
        entry.value == "chimeway_core.testing.plugin" for entry in entry_points(group="pytest11")
    )
    # Installed, the entry point loads the plugin; from a source tree, name it.
    result = pytester.runpytest(*([] if installed else ["-p", "chimeway_core.testing.plugin"]))
    result.assert_outcomes(passed=1)
