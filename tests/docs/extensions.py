"""Loading the docs' own extensions (``docs/_ext/*.py``), which are not a package, for tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

EXT = Path(__file__).resolve().parents[2] / "docs" / "_ext"


def load(name: str) -> ModuleType:
    """``docs/_ext/<name>.py`` as the module ``docs_ext_<name>``, loaded once."""
    spec = importlib.util.spec_from_file_location(f"docs_ext_{name}", EXT / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module
