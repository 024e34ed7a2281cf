"""docs/_ext/roles.py turns the docstrings' Sphinx roles into links or plain code, never raw text.

The strict docs build runs the extension on the real sources; these tests pin
its rules on small inputs: scope resolution, Sphinx's ``~``/``!``/explicit-title
forms, private paths replaced by their public re-export, and plain code for
what no documented package holds.
"""

from __future__ import annotations

import re

import griffe  # the test dependency group brings it (tests/selection.py: an extra)
import pytest

from tests.docs.extensions import load

RAW_ROLE = re.compile(r":(?:py:)?(?:class|meth|attr|func|data|exc|mod|obj|const|type):`")


roles = load("roles")


def _link(identifier: str, code: str) -> str:
    return f'<autoref identifier="{identifier}" optional>`{code}`</autoref>'


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        (":class:`Foo`", _link("pkg.Foo", "Foo")),
        (":py:class:`Foo`", _link("pkg.Foo", "Foo")),
        (":meth:`~pkg.Foo.bar`", _link("pkg.Foo.bar", "bar")),
        (":meth:`Foo.bar()`", _link("pkg.Foo.bar", "Foo.bar()")),
        (":func:`the decider <Foo>`", _link("pkg.Foo", "the decider")),
        (":class:`!Foo`", "`Foo`"),
        (":exc:`ValueError`", "`ValueError`"),
    ],
)
def test_one_role(written: str, expected: str) -> None:
    """Each Sphinx form becomes the link or the code Sphinx would show."""
    known = {"Foo": "pkg.Foo", "pkg.Foo.bar": "pkg.Foo.bar", "Foo.bar": "pkg.Foo.bar"}
    assert expected == roles.rewrite(f"{written}", known.get)


def test_rewrite_leaves_fences_fields_and_its_own_output_alone() -> None:
    """Fenced code and ``:param:`` fields are untouched; rewriting twice changes nothing."""
    fence = "```python\nx = ':class:`Kept`'\n```"
    text = f"Calls :func:`go`.\n\n{fence}\n\n:param go: see :class:`Go`.\n"
    once = roles.rewrite(text, lambda target: f"pkg.{target}")
    assert (
        f"Calls {_link('pkg.go', 'go')}.\n\n```python\nx = ':class:`Kept`'\n```\n\n"
        f":param go: see {_link('pkg.Go', 'Go')}.\n"
    ) == once
    assert once == roles.rewrite(once, lambda target: f"pkg.{target}")


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("the delay is::", "the delay is:"),
        ("the delay ::", "the delay"),
        ("    ::", ""),
        ("::: chimeway_core.engine", "::: chimeway_core.engine"),
        ("ends in :::", "ends in :::"),
        ("a: b", "a: b"),
    ],
)
def test_literal_block_marker_shows_as_sphinx_shows_it(written: str, expected: str) -> None:
    """A line ending in reST's ``::`` keeps one colon, or none after a space."""
    assert expected == roles.rewrite(written, lambda _: None)


def test_public_path_replaces_private_modules() -> None:
    """A private module's path becomes the package path that re-exports it, if one does."""
    exists = {"pkg.sub.Name", "pkg.Other"}.__contains__
    assert "pkg.sub.Name" == roles.public_path("pkg.sub._impl.Name", exists)
    assert "pkg.Other" == roles.public_path("pkg._a._b.Other", exists)
    assert roles.public_path("pkg._impl.Hidden", exists) is None
    assert "pkg.mod.Name" == roles.public_path("pkg.mod.Name", exists)


def test_extension_resolves_against_each_docstring_scope() -> None:
    """Loaded through Griffe, the extension leaves no raw role and links what it can."""
    modules = {
        "__init__.py": '"""The package."""\nfrom pkg._impl import Hidden\n__all__ = ["Hidden"]\n',
        "_impl.py": '"""Private."""\nclass Hidden:\n    """Hidden."""\n',
        "engine.py": (
            '"""Runs :class:`Engine`; see :class:`~pkg._impl.Hidden` and :exc:`KeyError`."""\n'
            "from pkg._impl import Hidden\n"
            "class Engine:\n"
            '    """Calls :meth:`run` and :func:`pkg.engine.helper`; :mod:`json` is plain."""\n'
            "    def run(self) -> None:\n"
            '        """Run, then :meth:`Engine.stop`; returns :class:`Hidden`."""\n'
            "    def stop(self) -> None:\n"
            '        """Stop."""\n'
            "def helper() -> None:\n"
            '    """Help :class:`Unknown`."""\n'
        ),
    }
    extensions = griffe.load_extensions(roles.SphinxRoles())
    with griffe.temporary_visited_package("pkg", modules, extensions=extensions) as package:
        engine = package["engine"]
        docs = {
            "module": engine.docstring.value,
            "class": engine["Engine"].docstring.value,
            "method": engine["Engine.run"].docstring.value,
            "function": engine["helper"].docstring.value,
        }
    assert {
        "module": (
            f"Runs {_link('pkg.engine.Engine', 'Engine')}; see "
            f"{_link('pkg.Hidden', 'Hidden')} and `KeyError`."
        ),
        "class": (
            f"Calls {_link('pkg.engine.Engine.run', 'run')} and "
            f"{_link('pkg.engine.helper', 'pkg.engine.helper')}; `json` is plain."
        ),
        "method": (
            f"Run, then {_link('pkg.engine.Engine.stop', 'Engine.stop')}; "
            f"returns {_link('pkg.Hidden', 'Hidden')}."
        ),
        "function": "Help `Unknown`.",
    } == docs
    assert not any(RAW_ROLE.search(text) for text in docs.values())


def test_extension_leaves_undocumented_packages_alone() -> None:
    """Given its packages, the extension rewrites only those and links only into them."""
    source = '"""See :class:`Thing` and :func:`other.helper`."""\nclass Thing:\n    pass\n'
    modules = {"__init__.py": source}
    with griffe.temporary_visited_package(
        "third", modules, extensions=griffe.load_extensions(roles.SphinxRoles(packages=["pkg"]))
    ) as third:
        assert "See :class:`Thing` and :func:`other.helper`." == third.docstring.value
    with griffe.temporary_visited_package(
        "pkg", modules, extensions=griffe.load_extensions(roles.SphinxRoles(packages=["pkg"]))
    ) as package:
        assert f"See {_link('pkg.Thing', 'Thing')} and `other.helper`." == package.docstring.value
