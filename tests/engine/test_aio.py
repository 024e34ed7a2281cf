"""AsyncChimeway: the engine awaited, in an AsyncSession's transaction or off the event loop.

On SQLite through aiosqlite and on PostgreSQL through psycopg's async mode,
each a real async driver on the database the ``store`` fixture made.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
from sqlalchemy.orm import Session

from chimeway_backends.memory import MemoryBackend
from chimeway_core import Chimeway, DeliveryStatus, NewDelivery, SQLStore, VirtualClock
from chimeway_core.aio import AsyncChimeway
from chimeway_core.policies import PolicyContext, PolicyDecision, Proceed
from chimeway_core.records import Delivery
from chimeway_core.testing import FakeChannel
from tests.engine.conftest import MakeEngine

#: The async drivers (aiosqlite, greenlet) are test-only dependencies; each test
#: imports SQLAlchemy's asyncio module itself, so the core session can collect
#: (and deselect) this module without them.
pytestmark = pytest.mark.extras

_T = TypeVar("_T")


def _run(coroutine: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    return asyncio.run(coroutine())


def _async_url(store: SQLStore) -> str:
    url = store.engine.url
    if url.get_backend_name() == "sqlite":
        url = url.set(drivername="sqlite+aiosqlite")
    return url.render_as_string(hide_password=False)


class _Threads:
    """A policy that records the thread each notify asked it on."""

    name = "threads"

    def __init__(self) -> None:
        self.seen: list[int] = []

    def evaluate(self, delivery: Delivery, context: PolicyContext) -> PolicyDecision:
        self.seen.append(threading.get_ident())
        return Proceed()


def test_notify_in_an_async_session_is_queued_at_its_commit(
    make_engine: MakeEngine, backend: MemoryBackend, store: SQLStore
) -> None:
    """Written in the session's transaction; queued at the commit; a rollback leaves nothing."""
    aio = AsyncChimeway(make_engine({"sms": FakeChannel()}))

    async def scenario() -> Delivery:
        from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

        engine = create_async_engine(_async_url(store))
        try:
            async with AsyncSession(engine) as session:
                kept = await aio.notify("sms", "+15550100", {"n": 1}, session=session)
                assert [] == backend.pending()
                await session.commit()
            async with AsyncSession(engine) as session:
                await aio.notify("sms", "+15550101", idempotency_key="gone", session=session)
                await session.rollback()
            return kept
        finally:
            await engine.dispose()

    kept = _run(scenario)
    assert [kept.id] == [job.delivery_id for job in backend.pending()]
    assert [kept.id] == [d.id for d in store.find()]


def test_an_async_savepoint_rollback_forgets_only_its_own(
    make_engine: MakeEngine, backend: MemoryBackend, store: SQLStore
) -> None:
    """notify_many before a savepoint, notify inside it, roll it back, commit: the first kept."""
    aio = AsyncChimeway(make_engine({"sms": FakeChannel()}))
    specs = [NewDelivery(channel="sms", recipient=f"+1555010{n}") for n in range(2)]

    async def scenario() -> list[Delivery]:
        from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

        engine = create_async_engine(_async_url(store))
        try:
            async with AsyncSession(engine) as session:
                kept = await aio.notify_many(specs, session=session)
                savepoint = await session.begin_nested()
                await aio.notify("sms", "+15550109", session=session)
                await savepoint.rollback()
                await session.commit()
            return kept
        finally:
            await engine.dispose()

    kept = _run(scenario)
    assert {d.id for d in kept} == {job.delivery_id for job in backend.pending()}
    assert {d.id for d in kept} == {d.id for d in store.find()}


def test_without_a_session_the_engine_runs_off_the_event_loop(
    make_engine: MakeEngine, backend: MemoryBackend, store: SQLStore
) -> None:
    """notify, get, cancel, explain and resend run in a worker thread, never the loop's."""
    threads = _Threads()
    aio = AsyncChimeway(make_engine({"sms": FakeChannel()}, policies=(threads,)))

    async def scenario() -> tuple[int, DeliveryStatus, list[str], Delivery]:
        loop_thread = threading.get_ident()
        delivery = await aio.notify("sms", "+15550100")
        cancelled = await aio.cancel(delivery.id)
        explained = await aio.explain(delivery.id)
        copy = (await aio.resend(delivery.id)).copy
        history = await aio.get(copy.id)
        return loop_thread, cancelled.status, explained, history.delivery

    loop_thread, cancelled, explained, copy = _run(scenario)
    assert (DeliveryStatus.CANCELLED, DeliveryStatus.READY) == (cancelled, copy.status)
    assert explained[-1].endswith("(cancelled)")
    assert threads.seen
    assert loop_thread not in threads.seen
    assert copy.id in {job.delivery_id for job in backend.pending()}


def test_a_session_that_is_not_async_is_refused_before_writing(
    make_engine: MakeEngine, store: SQLStore
) -> None:
    """A Session given to AsyncChimeway, an AsyncSession to Chimeway: TypeError, no write."""
    engine = make_engine({"sms": FakeChannel()})
    aio = AsyncChimeway(engine)

    async def scenario() -> None:
        from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

        with (
            Session(store.engine) as sync_session,
            pytest.raises(TypeError, match=r"must be a sqlalchemy\.ext\.asyncio\.AsyncSession"),
        ):
            await aio.notify("sms", "+15550100", session=sync_session)  # type: ignore[arg-type]
        async_engine = create_async_engine(_async_url(store))
        try:
            async with AsyncSession(async_engine) as session:
                with pytest.raises(TypeError, match="AsyncChimeway"):
                    engine.notify("sms", "+15550100", session=session)  # type: ignore[arg-type]
        finally:
            await async_engine.dispose()

    _run(scenario)
    assert [] == store.find()
    with pytest.raises(TypeError, match="engine must be a Chimeway"):
        AsyncChimeway(object())  # type: ignore[arg-type]


@pytest.mark.postgres
def test_asyncpg_writes_in_the_sessions_transaction_too(
    pg_store: SQLStore, backend: MemoryBackend, clock: VirtualClock
) -> None:
    """asyncpg, whose paramstyle is not psycopg's: batches, commit, rollback and the outbox."""
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    engine = Chimeway(pg_store, backend, {"sms": FakeChannel()}, clock=clock)
    aio = AsyncChimeway(engine)
    url = pg_store.engine.url.set(drivername="postgresql+asyncpg")
    specs = [NewDelivery(channel="sms", recipient=f"+1555010{n}") for n in range(3)]

    async def scenario() -> list[Delivery]:
        async_engine = create_async_engine(url)
        try:
            async with AsyncSession(async_engine) as session:
                kept = await aio.notify_many(specs, session=session)
                await session.commit()
            async with AsyncSession(async_engine) as session:
                await aio.notify("sms", "+15550109", session=session)
                await session.rollback()
            return kept
        finally:
            await async_engine.dispose()

    kept = _run(scenario)
    assert {d.id for d in kept} == {job.delivery_id for job in backend.pending()}
    assert {d.id for d in kept} == {d.id for d in pg_store.find()}
    engine.flush_outbox()  # the outbox's delete, through psycopg here
    assert 0 == pg_store.outbox_size()


@pytest.mark.postgres
@pytest.mark.parametrize("driver", ["postgresql+psycopg", "postgresql+asyncpg"])
def test_an_async_session_writes_in_the_stores_namespace(
    postgres_database: str,
    pg_store: SQLStore,
    backend: MemoryBackend,
    clock: VirtualClock,
    driver: str,
) -> None:
    """A namespaced store through an AsyncSession: the rows land in the namespace only."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    namespace = f"aio_{driver.rpartition('+')[2]}"
    store = SQLStore(postgres_database, namespace=namespace)
    store.create_all()
    aio = AsyncChimeway(Chimeway(store, backend, {"sms": FakeChannel()}, clock=clock))
    specs = [NewDelivery(channel="sms", recipient=f"+1555010{n}") for n in range(3)]

    async def scenario() -> list[Delivery]:
        async_engine = create_async_engine(store.engine.url.set(drivername=driver))
        try:
            async with AsyncSession(async_engine) as session:
                kept = await aio.notify_many(specs, session=session)
                # The session's own statements stay unqualified afterwards.
                assert 1 == (await session.execute(text("SELECT 1"))).scalar_one()
                await session.commit()
            return kept
        finally:
            await async_engine.dispose()

    try:
        kept = _run(scenario)
        assert {d.id for d in kept} == {d.id for d in store.find()}
        assert {d.id for d in kept} == {job.delivery_id for job in backend.pending()}
        assert [] == pg_store.find()  # the default schema's ledger
    finally:
        with store.engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {namespace} CASCADE"))
        store.engine.dispose()
