"""Proving a deployment: chimeway's suites on an application's own backend and database.

``chimeway selftest --app module:engine`` runs the backend conformance suite
and the real-time stateful engine machine against the application's engine
as it is configured: its database and its queue's service. Nothing of the
application's is touched: each test gets

- a scratch namespace on the application's database
  (:mod:`~chimeway_core.ledger.namespace`: a PostgreSQL schema, or a SQLite
  file beside the database), with chimeway's tables, removed at its end;
- a scratch queue on the application's queue service, removed at its end;
- the worker of the application's backend, run by the backend's own
  :class:`OpenHarness` (the ``harness`` of its
  :class:`~chimeway_core.cli.backends.WorkerBackend` in the
  ``chimeway.backends`` entry-point group): memory, RQ and Celery ship one,
  and a backend that joins the group joins the selftest by shipping its own.

The tests' engines are the suites' own (scripted channels and policies), on
the application's backend and store; the application's channels are never
called.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Final, Protocol

from sqlalchemy import Engine, text

from chimeway_core.backend import Backend
from chimeway_core.engine import Chimeway
from chimeway_core.errors import ChimewayError
from chimeway_core.ledger.namespace import detach_sqlite, sqlite_file
from chimeway_core.loading import load_engine
from chimeway_core.store import SQLStore
from chimeway_core.testing.conformance import EngineFactory
from chimeway_core.testing.stateful import MachineHarness

__all__ = [
    "APP_VARIABLE",
    "NoSelftestHarnessError",
    "OpenHarness",
    "app_harness",
    "application_backend",
    "scratch_store",
]

#: Names the application's engine (``module:attribute``) for ``chimeway selftest --app``.
APP_VARIABLE: Final = "CHIMEWAY_SELFTEST_APP"
#: What scratch namespaces and queues are called, before their random part.
SCRATCH_PREFIX: Final = "chimeway_selftest_"


class OpenHarness(Protocol):
    """How a backend runs chimeway's suites: a harness on a scratch queue of its service.

    Called with the application's backend (for its connection or broker), the
    scratch store, the suite's engine factory and the scratch queue's name;
    returns a context manager yielding a
    :class:`~chimeway_core.testing.stateful.MachineHarness` whose engine
    ``engine_factory`` built on a backend of the same kind serving ``queue``,
    and removing every trace of ``queue`` when it closes. ``time_limit``
    (seconds) is how long one job may run, for a queue that kills jobs.
    """

    def __call__(
        self,
        backend: Backend,
        store: SQLStore,
        engine_factory: EngineFactory,
        queue: str,
        *,
        time_limit: float,
    ) -> AbstractContextManager[MachineHarness]:
        """The harness, open for the block."""
        ...


class NoSelftestHarnessError(ChimewayError):
    """The application's backend registers no harness for ``chimeway selftest --app``."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        super().__init__(
            f"the {backend} backend offers no selftest harness: its WorkerBackend in the "
            "chimeway.backends entry-point group has no harness"
        )


def _drop(engine: Engine, store: SQLStore, namespace: str) -> None:
    store.drop_all()
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {namespace} CASCADE"))
        return
    # SQLite: the attached file (and its WAL files), once no connection holds it.
    detach_sqlite(engine, namespace)
    attached = sqlite_file(engine.url.database, namespace)
    if attached != ":memory:":
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(attached + suffix).unlink(missing_ok=True)


@contextmanager
def scratch_store(store: SQLStore) -> Iterator[SQLStore]:
    """A store in a new namespace of ``store``'s database, with chimeway's tables; removed after.

    On ``store``'s own engine (its connection settings kept); the namespace is
    ``chimeway_selftest_`` and random hex.
    """
    namespace = f"{SCRATCH_PREFIX}{secrets.token_hex(4)}"
    scratch = SQLStore(store.engine, namespace=namespace)
    scratch.create_all()
    try:
        yield scratch
    finally:
        _drop(store.engine, scratch, namespace)


@functools.cache
def _application(path: str) -> Chimeway:
    """The application's engine, imported once per process."""
    return load_engine(path)


def application_backend(path: str) -> Backend:
    """The backend of the engine ``path`` names, checked to have a selftest harness.

    Raises what loading the engine raises, and :class:`NoSelftestHarnessError`.
    """
    backend = _application(path).backend
    if not isinstance(backend, Backend):
        raise NoSelftestHarnessError(type(backend).__qualname__)
    _open_harness_of(backend)
    return backend


def _open_harness_of(backend: Backend) -> OpenHarness:
    # Lazy: the command line's registry of backends, which imports the adapter.
    from chimeway_core.cli.backends import require  # noqa: PLC0415

    harness = require(backend.name).harness
    if harness is None:
        raise NoSelftestHarnessError(backend.name)
    return harness


@contextmanager
def app_harness(
    path: str, engine_factory: EngineFactory, *, time_limit: float
) -> Iterator[MachineHarness]:
    """A harness on the application ``path`` names: its backend's kind, a scratch queue and store.

    ``path`` is ``module:attribute`` naming the engine (or a factory of it),
    as ``--app`` does. Raises what loading it raises, and
    :class:`NoSelftestHarnessError` for a backend without a harness.
    """
    application = _application(path)
    backend = application_backend(path)
    open_harness = _open_harness_of(backend)
    queue = f"{SCRATCH_PREFIX}{secrets.token_hex(4)}".replace("_", "-")
    with (
        scratch_store(application.store) as store,
        open_harness(backend, store, engine_factory, queue, time_limit=time_limit) as harness,
    ):
        yield harness
