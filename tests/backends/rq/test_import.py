"""Importing the RQ backend: the real ``rq`` package, and a clear error without the extra."""

from __future__ import annotations

import importlib
import sys

import pytest

import chimeway_backends.rq
from chimeway_core.errors import MissingExtraError


def test_the_module_uses_the_top_level_rq_package() -> None:
    """``import rq`` inside chimeway_backends/rq.py is the RQ library, not the module itself."""
    import rq

    inner = vars(chimeway_backends.rq)["rq"]
    assert rq is inner
    assert "rq" == inner.__name__


@pytest.mark.parametrize("hidden", ["rq", "redis"])
def test_without_the_extra_the_import_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, hidden: str
) -> None:
    """Without rq (or redis), importing the backend raises MissingExtraError naming the extra."""
    monkeypatch.setitem(sys.modules, hidden, None)
    monkeypatch.delitem(sys.modules, "chimeway_backends.rq")
    with pytest.raises(MissingExtraError, match=r'pip install "chimeway\[rq\]"') as caught:
        importlib.import_module("chimeway_backends.rq")
    assert ("rq", True) == (caught.value.extra, isinstance(caught.value, ImportError))
