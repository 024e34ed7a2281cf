"""notify() in the caller's transaction, awaited (AsyncChimeway) next to sync, on PostgreSQL.

Interleaved runs, each notifying N deliveries one by one, each in a
transaction of its own that commits, on the memory backend:

- sync (the anchor): ``engine.notify(..., session=session)`` with a
  SQLAlchemy ``Session`` (psycopg), then ``session.commit()``;
- async: ``await AsyncChimeway(engine).notify(..., session=session)`` with an
  ``AsyncSession``, then ``await session.commit()``, on psycopg's async mode
  and on asyncpg.

What the ratio measures is the price of SQLAlchemy's greenlet bridge and the
event loop around the same writes.

    python bench/bench_async.py [--smoke]     # this area alone, JSON on stdout
"""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from _harness import (
    Config,
    Results,
    expect,
    interleave,
    log,
    postgres_database,
    reachable,
    run_area,
)
from chimeway_core import Chimeway, SQLStore
from chimeway_core.aio import AsyncChimeway
from chimeway_core.memory import MemoryBackend
from chimeway_core.testing import FakeChannel

AREA = "async"


def _engine(url: str) -> Chimeway:
    store = SQLStore(create_engine(url))
    return Chimeway(store, MemoryBackend(), {"sms": FakeChannel()})


def _sync(url: str, n: int, offset: int) -> float:
    engine = _engine(url)
    try:
        started = time.perf_counter()
        with Session(engine.store.engine) as session:
            for i in range(n):
                engine.notify("sms", f"+1555{offset + i:07}", {"n": i}, session=session)
                session.commit()
        rate = n / (time.perf_counter() - started)
    finally:
        engine.store.engine.dispose()
    return rate


def _async(url: str, driver: str, n: int, offset: int) -> float:
    engine = _engine(url)
    aio = AsyncChimeway(engine)

    async def run() -> float:
        database = create_async_engine(url.replace("+psycopg", f"+{driver}"))
        try:
            started = time.perf_counter()
            async with AsyncSession(database) as session:
                for i in range(n):
                    await aio.notify("sms", f"+1555{offset + i:07}", {"n": i}, session=session)
                    await session.commit()
            return n / (time.perf_counter() - started)
        finally:
            await database.dispose()

    try:
        return asyncio.run(run())
    finally:
        engine.store.engine.dispose()


def run(config: Config, results: Results) -> None:
    """Interleaved sync / async notify on one PostgreSQL database."""
    if not reachable(config.postgres_admin_url, 5432):
        results.note(AREA, "PostgreSQL unreachable: skipped")
        return
    n = config.size(500, 10)
    with postgres_database(config.postgres_admin_url) as url:
        SQLStore(url).create_all()
        offsets = iter(range(0, 10**7, n))
        cases = {
            "sync notify": lambda: _sync(url, n, next(offsets)),
            "async notify, psycopg": lambda: _async(url, "psycopg", n, next(offsets)),
            "async notify, asyncpg": lambda: _async(url, "asyncpg", n, next(offsets)),
        }
        samples = interleave(cases, config.runs)
        written = SQLStore(url)
        expect("deliveries written", n * len(cases) * config.runs, sum(written.counts().values()))
        written.engine.dispose()
    for driver in ("psycopg", "asyncpg"):
        entry = results.compare(
            AREA,
            f"notify in the caller's transaction, async ({driver}) vs sync, PostgreSQL",
            (f"async notify, {driver}", samples[f"async notify, {driver}"]),
            ("sync notify", samples["sync notify"]),
            unit="deliveries/s",
            detail=f"N={n} per run, one notify and one commit each, memory backend",
        )
        log(AREA, f"async ({driver}) x{entry['ratio']['median']:.2f} of sync")


if __name__ == "__main__":
    run_area(run)
