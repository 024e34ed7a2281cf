"""Alembic environment for chimeway's own tables (run by :func:`upgrade`).

Uses the connection :func:`chimeway_core.migrations.upgrade` passes in
``config.attributes["connection"]``, or else ``sqlalchemy.url`` from the
Alembic config; with neither it raises
:class:`~chimeway_core.errors.NoDatabaseConfiguredError`. Offline mode
(``--sql``) renders the SQL instead.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from chimeway_core.errors import NoDatabaseConfiguredError
from chimeway_core.ledger.schema import metadata
from chimeway_core.migrations import VERSION_TABLE

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        # A namespace's own history, beside its tables (the connection
        # qualifies the migrations' table names).
        version_table_schema=config.attributes.get("namespace"),
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    """Render the migrations as SQL for ``sqlalchemy.url``'s dialect."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Run the migrations on the given connection, or on ``sqlalchemy.url``."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if url is None:
        raise NoDatabaseConfiguredError(config.config_file_name)
    engine = create_engine(url)
    try:
        with engine.begin() as new_connection:
            _run(new_connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
