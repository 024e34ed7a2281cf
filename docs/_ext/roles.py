"""Render the Sphinx roles of chimeway's docstrings as cross-references in the API reference.

The docstrings are written in Sphinx style (``:param x:`` fields, ``:class:`Foo```
inline roles) so they read well in ``help()`` and in an editor. mkdocstrings'
Sphinx parser understands the fields but not the inline roles, which would show
as literal ``:class:`` text. This Griffe extension rewrites every inline role, in
memory and at build time, before mkdocstrings parses the docstring; the sources
are never touched.

Theory of operation:

- A role is ``:kind:`target``` (also ``:py:kind:``), where ``kind`` is one of
  :data:`ROLE_KINDS`. Sphinx's forms are honoured: ``~a.b.C`` shows ``C``,
  ``!C`` never links, ``text <a.b.C>`` shows ``text``, a trailing ``()`` is
  kept in the text and dropped from the target.
- The target is resolved the way Sphinx resolves it: a short name (``decide``,
  ``Chimeway.rescue``, a sibling method ``prune``) against the scope of the
  object that owns the docstring (its members, then its parents'), a full path
  (``chimeway_core.errors.ChimewayError``) as written.
- A path through a private module (``pkg._impl.Name``) is replaced by the public
  path that re-exports it (``pkg.Name``) when that exists, so no private path
  reaches the page, not even in a link's tooltip; otherwise the role is plain code.
- A line ending in reST's literal-block marker ``::`` shows one colon (or none
  after a space), as Sphinx shows it; the indented block after it is code in
  Markdown too.
- A resolved target becomes an *optional* mkdocs-autorefs reference: a link when
  some page documents that object, plain code when none does. A name that does
  not resolve to one of the documented packages (``ValueError``,
  ``sqlalchemy.orm.Session``) is plain code.

Registered in ``mkdocs.yml`` under the Python handler's ``extensions``;
``tests/docs/test_roles.py`` pins the rewriting.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from typing import Any

import griffe

#: The Python-domain roles that are rewritten (the ``py:`` prefix is optional).
ROLE_KINDS = ("class", "meth", "attr", "func", "data", "exc", "mod", "obj", "const", "type")

ROLE = re.compile(r"(?<![\w`]):(?:py:)?(?P<kind>" + "|".join(ROLE_KINDS) + r"):`(?P<body>[^`\n]+)`")
EXPLICIT_TITLE = re.compile(r"^(?P<text>.+?)\s*<(?P<target>[^<>]+)>$")
FENCE = re.compile(r"^(\s*)(```|~~~)")

Resolver = Callable[[str], "str | None"]
"""Maps a role's target to the identifier to link to, or ``None`` for plain code."""


def rewrite(text: str, resolve: Resolver) -> str:
    """Return ``text`` with every inline role replaced by Markdown, fenced code left alone.

    A reST literal-block marker (a line ending in ``::``) loses its extra colon,
    as reST shows it.

    ``resolve`` receives the role's target (no ``~``, ``!`` or ``()``) and returns
    the identifier to link to, or ``None`` to render the role as plain code.
    Running it again on its own output changes nothing.
    """
    lines = text.split("\n")
    fenced = False
    for index, line in enumerate(lines):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        linked = ROLE.sub(lambda match: _replace(match, resolve), line) if ":`" in line else line
        lines[index] = _literal_marker(linked)
    return "\n".join(lines)


def _literal_marker(line: str) -> str:
    # reST: "text::" shows "text:", "text ::" and a lone "::" show nothing; the
    # indented block after it is code in Markdown as it is in reST.
    if not line.endswith("::") or line.endswith(":::"):
        return line
    before = line[:-2]
    return before.rstrip() if not before.strip() or before[-1].isspace() else f"{before}:"


def _replace(match: re.Match[str], resolve: Resolver) -> str:
    body = match["body"].strip()
    explicit = EXPLICIT_TITLE.match(body)
    if explicit:
        shown, target = explicit["text"], explicit["target"].strip()
    else:
        shown, target = None, body
    link = not target.startswith("!")
    target = target.lstrip("!")
    short = target.startswith("~")
    target = target.lstrip("~")
    call = "()" if target.endswith("()") else ""
    target = target.removesuffix("()")
    identifier = resolve(target) if link and target else None
    if shown is None:
        if short:
            shown = target.rsplit(".", 1)[-1] + call
        elif identifier is not None and _is_private(target):
            shown = identifier + call  # the public path, never the private one written
        elif _is_private(target):
            shown = target.rsplit(".", 1)[-1] + call
        else:
            shown = target + call
    code = f"`{shown}`"
    if identifier is None:
        return code
    return f'<autoref identifier="{identifier}" optional>{code}</autoref>'


def _is_private(path: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in path.split("."))


def public_path(path: str, exists: Callable[[str], bool]) -> str | None:
    """Return ``path`` without its private modules if that path exists, else ``None``.

    ``pkg._impl.Name`` becomes ``pkg.Name`` when ``pkg`` re-exports ``Name``; a
    path with no private part is returned as is.
    """
    if not _is_private(path):
        return path
    parts = path.split(".")
    candidates = [
        ".".join(parts[:cut] + parts[-1:])
        for cut in range(len(parts) - 1, 0, -1)
        if not _is_private(".".join(parts[:cut] + parts[-1:]))
    ]
    return next((candidate for candidate in candidates if exists(candidate)), None)


class SphinxRoles(griffe.Extension):
    """Rewrite the inline Sphinx roles of every docstring of the documented packages."""

    def __init__(self, packages: list[str] | None = None) -> None:
        """``packages``: the top-level packages documented (default: every package loaded).

        Their docstrings are rewritten and their objects linked to, whether or
        not they are loaded yet; a third-party package Griffe loads on the way
        (to follow a base class, say) is left alone.
        """
        super().__init__()
        self.packages = set(packages or ())

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **_: Any) -> None:
        """Rewrite the docstrings of ``pkg`` once it is completely loaded."""
        if self.packages and pkg.name not in self.packages:
            return
        collection = loader.modules_collection
        for obj in _walk(pkg):
            if obj.docstring is not None and (
                ":`" in obj.docstring.value or "::" in obj.docstring.value
            ):
                obj.docstring.value = rewrite(
                    obj.docstring.value,
                    functools.partial(self._resolve, obj, collection=collection),
                )

    def _resolve(
        self, obj: griffe.Object, target: str, *, collection: griffe.ModulesCollection
    ) -> str | None:
        head, _, rest = target.partition(".")
        try:
            path = obj.resolve(head)
        except griffe.NameResolutionError:
            path = head  # a full path, or a name of no documented package
        full = f"{path}.{rest}" if rest else path
        top = full.split(".", 1)[0]
        if top not in (self.packages or collection.members):
            return None  # the standard library or a third party: plain code

        def exists(candidate: str) -> bool:
            if candidate.split(".", 1)[0] not in collection.members:
                return True  # a package not loaded yet: trust the public path
            try:
                collection.get_member(candidate)
            except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
                return False
            return True

        return public_path(full, exists)


def _walk(obj: griffe.Object) -> Iterator[griffe.Object]:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)  # type: ignore[arg-type]
