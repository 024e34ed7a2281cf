"""The ledger's schema as Alembic migrations shipped inside the package.

Two ways to own the schema in production:

- Let chimeway migrate its own tables: call :func:`upgrade` at deploy time
  (it records its revision in its own ``chimeway_alembic_version`` table, so
  it never collides with your application's Alembic history).
- Or fold the tables into your own Alembic environment: add
  :data:`chimeway_core.schema.metadata` to ``target_metadata`` and let
  autogenerate write them into your migrations.

Alembic is the optional extra ``migrations``; it is imported only when
:func:`upgrade` runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from sqlalchemy import Engine, create_engine

from chimeway_core.errors import MissingExtraError

__all__ = ["SCRIPT_LOCATION", "VERSION_TABLE", "upgrade"]

#: Where the migration scripts live (this package's directory).
SCRIPT_LOCATION: Final = str(Path(__file__).parent)
#: The table in which chimeway records the revision its tables are at.
VERSION_TABLE: Final = "chimeway_alembic_version"


def upgrade(url_or_engine: str | Engine, revision: str = "head") -> None:
    """Apply chimeway's migrations to the database up to ``revision``.

    ``url_or_engine`` is a database URL or an :class:`~sqlalchemy.Engine`
    (left open; an engine made from a URL is disposed afterwards). Runs in one
    transaction; applying it to an up-to-date database does nothing. Raises
    :class:`~chimeway_core.errors.MissingExtraError` naming
    ``pip install "chimeway[migrations]"`` when Alembic is not installed.
    """
    try:
        # Lazy on purpose: alembic is the optional extra "migrations".
        from alembic import command  # noqa: PLC0415
        from alembic.config import Config  # noqa: PLC0415
    except ImportError as error:
        raise MissingExtraError("migrations", feature="chimeway_core.migrations.upgrade") from error
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    owned = isinstance(url_or_engine, str)
    engine = create_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        if owned:
            engine.dispose()
