"""The testing kit's hypothesis and pytest parts: a clear error without the "testing" extra."""

from __future__ import annotations

import importlib
import sys

import pytest

from chimeway_core.errors import MissingExtraError

PARTS = [
    "chimeway_core.testing.strategies",
    "chimeway_core.testing.stateful",
    "chimeway_core.testing.conformance",
    "chimeway_core.testing.selftest",
]


@pytest.mark.parametrize("hidden", ["hypothesis", "pytest"])
@pytest.mark.parametrize("module", PARTS)
def test_without_the_extra_the_import_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, module: str, hidden: str
) -> None:
    """Without hypothesis (or pytest) a part that needs it raises MissingExtraError, naming it."""
    importlib.import_module(module)  # with everything installed it imports
    for name in [name for name in sys.modules if name == hidden or name.startswith(f"{hidden}.")]:
        monkeypatch.setitem(sys.modules, name, None)
    for part in PARTS:
        monkeypatch.delitem(sys.modules, part, raising=False)
    needs = {
        "chimeway_core.testing.strategies": {"hypothesis"},
        "chimeway_core.testing.stateful": {"hypothesis", "pytest"},  # through conformance
        "chimeway_core.testing.conformance": {"pytest"},
        "chimeway_core.testing.selftest": {"hypothesis", "pytest"},
    }[module]
    if hidden not in needs:
        importlib.import_module(module)
        return
    with pytest.raises(MissingExtraError, match=r'pip install "chimeway\[testing\]"') as caught:
        importlib.import_module(module)
    assert ("testing", True) == (caught.value.extra, isinstance(caught.value, ImportError))
