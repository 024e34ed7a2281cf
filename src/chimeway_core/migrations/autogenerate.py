"""Hooks for your application's Alembic ``env.py``, so autogenerate and chimeway coexist.

Two routes, one per database:

- **chimeway migrates its own tables** (``chimeway db upgrade``): pass
  ``include_name=include_name`` (and ``include_object=include_object``) to
  ``context.configure()``. Autogenerate then neither drops chimeway's tables
  and its ``chimeway_alembic_version`` nor proposes to create them.
- **Your migrations hold chimeway's tables** (``target_metadata = [app,
  chimeway_metadata]``): pass ``render_item=render_item``, so the migrations
  autogenerate writes use plain SQLAlchemy types and run without importing
  chimeway.

Each takes an application hook of the same shape to combine with
(:func:`excluding_chimeway`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from chimeway_core.ledger.schema import UTCDateTime, metadata

__all__ = [
    "CHIMEWAY_TABLES",
    "excluding_chimeway",
    "include_name",
    "include_object",
    "render_item",
]

#: Every table chimeway owns: its ledger's, and the table of its own Alembic history.
CHIMEWAY_TABLES: Final = frozenset({*metadata.tables, "chimeway_alembic_version"})

IncludeName = Callable[[str | None, str, dict[str, Any]], bool]
IncludeObject = Callable[[Any, str | None, str, bool, Any], bool]


def _table_of(obj: Any, name: str | None, type_: str) -> str | None:
    """The name of the table ``obj`` is, or belongs to."""
    if type_ == "table":
        return name
    table = getattr(obj, "table", None)
    return getattr(table, "name", None)


def include_name(name: str | None, type_: str, parent_names: dict[str, Any]) -> bool:
    """Alembic's ``include_name``: ``False`` for chimeway's tables, ``True`` otherwise.

    Alembic asks it before reflecting a table of the database, so a table of
    chimeway's is never compared (and never proposed for dropping).
    """
    if type_ == "table":
        return name not in CHIMEWAY_TABLES
    return parent_names.get("table_name") not in CHIMEWAY_TABLES


def include_object(
    obj: Any,
    name: str | None,
    type_: str,
    reflected: bool,  # noqa: ARG001 -- Alembic's signature
    compare_to: Any,  # noqa: ARG001 -- Alembic's signature
) -> bool:
    """Alembic's ``include_object``: ``False`` for chimeway's tables and what belongs to them.

    Also keeps chimeway's metadata, when it is part of ``target_metadata``,
    out of a comparison that should not manage it.
    """
    return _table_of(obj, name, type_) not in CHIMEWAY_TABLES


def excluding_chimeway(
    include_name_hook: IncludeName | None = None,
    include_object_hook: IncludeObject | None = None,
) -> dict[str, Callable[..., bool]]:
    """``context.configure()`` keywords that leave chimeway's tables out, and your hooks in.

    ``context.configure(connection=..., target_metadata=...,
    **excluding_chimeway(my_include_name, my_include_object))``: a name or
    object passes when it is not chimeway's and your hook (if any) passes it.
    """

    def combined_name(name: str | None, type_: str, parent_names: dict[str, Any]) -> bool:
        return include_name(name, type_, parent_names) and (
            include_name_hook is None or include_name_hook(name, type_, parent_names)
        )

    def combined_object(
        obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
    ) -> bool:
        return include_object(obj, name, type_, reflected, compare_to) and (
            include_object_hook is None
            or include_object_hook(obj, name, type_, reflected, compare_to)
        )

    return {"include_name": combined_name, "include_object": combined_object}


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    """Alembic's ``render_item``: chimeway's column types as plain SQLAlchemy types.

    Its UTC timestamp (a Python-side conversion over ``DateTime(timezone=True)``)
    is written ``sa.DateTime(timezone=True)`` (with your
    ``sqlalchemy_module_prefix``), the column chimeway's own migrations
    create; anything else is left to Alembic (``False``).
    """
    if type_ == "type" and isinstance(obj, UTCDateTime):
        prefix = autogen_context.opts.get("sqlalchemy_module_prefix") or "sa."
        return f"{prefix}DateTime(timezone=True)"
    return False
