"""Core statements compiled once per dialect and run as driver SQL.

``Connection.execute`` of a Core statement looks up its compiled form, runs
every parameter through its type and sets up typed result processing, on
every call. For the few statements every delivery runs (the lock's read, the
claim, the record) that is most of the Python cost of a write, and the
machine this project is measured on spends more time there than waiting for
the database (docs/performance.md).

A :class:`Precompiled` does that work once per dialect: it compiles the
statement, keeps the statement's own constant parameters and the bind and
result processors of its column types, and runs the SQL text with
``exec_driver_sql``. The conversions stay those of the schema's types (the
UTC timestamps, JSON), the SQL stays the one SQLAlchemy writes, and engine
events (``before_cursor_execute``, the statement counters) still see every
statement.

A connection running in a namespace (``schema_translate_map``, see
:mod:`~chimeway_core.ledger.namespace`) gets the SQL compiled with its
table names qualified, once per namespace.

Only statements whose every parameter is an explicit ``bindparam`` qualify:
a bare ``table.insert()`` compiles its columns from the keys it is given.

:meth:`Precompiled.execute_many` runs one statement for many rows (the
driver's ``executemany``): a timestamp a batch holds many times (its ``now``)
is converted once per distinct value, and parameters shared by every row are
converted once per call.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import attrs
from sqlalchemy import Connection, CursorResult, DateTime, Dialect, TypeDecorator
from sqlalchemy.sql.selectable import ExecutableReturnsRows
from sqlalchemy.types import TypeEngine

from chimeway_core.ledger.namespace import namespace_of, translate_map

__all__ = ["Precompiled"]

_Processor = Callable[[Any], Any]
_UNSEEN: Final = object()


def _is_timestamp(kind: TypeEngine[Any]) -> bool:
    if isinstance(kind, TypeDecorator):
        kind = kind.impl_instance
    return isinstance(kind, DateTime)


@attrs.frozen
class _Compiled:
    sql: str
    defaults: Mapping[str, Any]
    # The parameters the statement has no value of its own for.
    required: frozenset[str]
    # The positional order of the parameters, for qmark/numeric dialects.
    positions: tuple[str, ...] | None
    binds: tuple[tuple[str, _Processor], ...]
    results: tuple[_Processor | None, ...]
    # The parameters holding timestamps: the same value converts the same way.
    timestamps: frozenset[str] = frozenset()


class Precompiled:
    """One Core statement, compiled once per dialect, executed as driver SQL.

    ``execute`` takes the statement's named parameters (those it does not get
    keep the values the statement was built with; one with no value of its own
    missing raises :class:`ValueError`) and converts each through its type
    exactly as ``Connection.execute`` would. ``first`` also converts
    the returned row through the result columns' types.
    """

    def __init__(self, statement: ExecutableReturnsRows) -> None:
        self.statement: Final = statement
        self._by_dialect: dict[tuple[Dialect, str | None], _Compiled] = {}

    def _compile(self, dialect: Dialect, namespace: str | None) -> _Compiled:
        if namespace is None:
            compiled = self.statement.compile(dialect=dialect)
        else:
            compiled = self.statement.compile(
                dialect=dialect,
                schema_translate_map=translate_map(namespace),
                render_schema_translate=True,
            )
        # By name: a parameter used twice in the SQL is still converted once.
        processors = {
            name: process
            for bind, name in compiled.bind_names.items()
            if (process := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        }
        # A SELECT's columns, or an INSERT/UPDATE's RETURNING columns.
        results = tuple(
            column.type.dialect_impl(dialect).result_processor(dialect, None)
            for column in self.statement.exported_columns
        )
        positions = tuple(compiled.positiontup) if compiled.positiontup is not None else None
        result = _Compiled(
            sql=str(compiled),
            defaults=dict(compiled.params),
            required=frozenset(name for bind, name in compiled.bind_names.items() if bind.required),
            positions=positions,
            binds=tuple(processors.items()),
            results=results if any(results) else (),
            timestamps=frozenset(
                name for bind, name in compiled.bind_names.items() if _is_timestamp(bind.type)
            ),
        )
        # A race compiles twice and keeps either: both are the same.
        self._by_dialect[dialect, namespace] = result
        return result

    def execute(self, conn: Connection, parameters: Mapping[str, Any]) -> CursorResult[Any]:
        """Run the statement on ``conn`` with ``parameters``; the raw driver result."""
        key = (conn.dialect, namespace_of(conn))
        compiled = self._by_dialect.get(key) or self._compile(*key)
        if missing := compiled.required - parameters.keys():
            # Core raises here too; binding NULL instead would fail a fence silently.
            raise ValueError(f"no value for the parameters {sorted(missing)}")
        values = {**compiled.defaults, **parameters}
        for name, process in compiled.binds:
            values[name] = process(values[name])
        if compiled.positions is not None:
            return conn.exec_driver_sql(
                compiled.sql, tuple(values[name] for name in compiled.positions)
            )
        return conn.exec_driver_sql(compiled.sql, values)

    def execute_many(
        self,
        conn: Connection,
        rows: Sequence[Mapping[str, Any]],
        shared: Mapping[str, Any] | None = None,
    ) -> CursorResult[Any]:
        """Run the statement once per row (the driver's ``executemany``); the raw result.

        Each row gives the parameters that vary (every one with no value of
        its own, and not in ``shared``); ``shared`` those every row has in
        common. Conversions are those of :meth:`execute`. Its ``rowcount`` is
        the number of rows the statement changed in all. ``rows`` is not empty.
        """
        key = (conn.dialect, namespace_of(conn))
        compiled = self._by_dialect.get(key) or self._compile(*key)
        shared = shared or {}
        varying = compiled.required - shared.keys()
        common = {
            **{name: value for name, value in compiled.defaults.items() if name not in varying},
            **shared,
        }
        processors = dict(compiled.binds)
        for name in common.keys() - varying:
            if name in processors:
                common[name] = processors[name](common[name])
        names = compiled.positions or tuple(sorted({*common, *varying}))
        # A row's varying values are picked in one call, converted in place,
        # then put among the shared ones (already converted) in statement order.
        picked = tuple(name for name in names if name in varying)
        converts: list[tuple[int, _Processor, dict[Any, Any] | None]] = [
            (index, process, {} if name in compiled.timestamps else None)
            for index, name in enumerate(picked)
            if (process := processors.get(name)) is not None
        ]
        merge = (
            None
            if len(picked) == len(names)
            else [(picked.index(n), None) if n in varying else (-1, common[n]) for n in names]
        )
        pick = operator.itemgetter(*picked) if len(picked) > 1 else None
        batch: list[Any] = []
        for row in rows:
            values = [row[name] for name in picked] if pick is None else [*pick(row)]
            for index, process, seen in converts:
                value = values[index]
                if seen is None:
                    values[index] = process(value)
                else:
                    converted = seen.get(value, _UNSEEN)
                    if converted is _UNSEEN:
                        converted = seen[value] = process(value)
                    values[index] = converted
            if merge is not None:
                values = [values[at] if at >= 0 else constant for at, constant in merge]
            batch.append(
                tuple(values) if compiled.positions else dict(zip(names, values, strict=True))
            )
        return conn.exec_driver_sql(compiled.sql, batch)

    def first(self, conn: Connection, parameters: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """Run the statement; its first row with each value converted by its type, or None."""
        row = self.execute(conn, parameters).first()
        if row is None:
            return None
        compiled = self._by_dialect[conn.dialect, namespace_of(conn)]
        if not compiled.results:
            return tuple(row)
        return tuple(
            value if process is None else process(value)
            for process, value in zip(compiled.results, row, strict=True)
        )
