"""chimeway for asyncio applications: :class:`AsyncChimeway`.

An engine's own API is synchronous: a worker runs one job at a time per
thread. An asyncio application (FastAPI, Starlette, aiohttp) awaits instead,
and often holds an SQLAlchemy :class:`~sqlalchemy.ext.asyncio.AsyncSession`.
:class:`AsyncChimeway` wraps an engine so that each call awaits:

- with ``session=`` (an ``AsyncSession``), the delivery is written through
  that session's own connection, inside its transaction, with SQLAlchemy's
  greenlet bridge (``AsyncSession.run_sync``), on psycopg's async mode,
  asyncpg or aiosqlite; a rollback leaves no delivery and no job. The job is queued
  when the outermost transaction commits, inside ``await session.commit()``:
  one broker round trip on the event loop's thread.
- without it, the call runs in a worker thread (:func:`asyncio.to_thread`)
  on the engine's own database engine, so the event loop never waits on the
  database.

Needs SQLAlchemy's asyncio support (the ``asyncio`` extra: greenlet) only
when a session is given.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

from sqlalchemy.orm import Session

from chimeway_core.engine import Chimeway
from chimeway_core.records import Delivery, DeliveryHistory, NewDelivery, Resent

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["AsyncChimeway"]

_T = TypeVar("_T")


class AsyncChimeway:
    """An engine's notify, resend, get and cancel, awaitable; see the module docstring.

    Every method takes and returns what the engine's method of the same name
    does, and raises what it raises. ``session`` is an
    :class:`~sqlalchemy.ext.asyncio.AsyncSession` (a
    :class:`TypeError` otherwise, before anything is written).
    """

    def __init__(self, engine: Chimeway) -> None:
        if not isinstance(engine, Chimeway):
            raise TypeError(f"engine must be a Chimeway, not {type(engine).__name__}")
        self.engine = engine

    def __repr__(self) -> str:
        return f"AsyncChimeway({self.engine!r})"

    async def notify(
        self,
        channel: str,
        recipient: str,
        payload: Any = None,
        *,
        notification_key: str | None = None,
        idempotency_key: str | None = None,
        max_attempts: int | None = None,
        scheduled_at: datetime | None = None,
        expires_at: datetime | None = None,
        metadata: Mapping[str, Any] | None = None,
        session: AsyncSession | None = None,
    ) -> Delivery:
        """Record a delivery and queue it (see :meth:`Chimeway.notify`), awaiting."""
        call = functools.partial(
            self.engine.notify,
            channel,
            recipient,
            payload,
            notification_key=notification_key,
            idempotency_key=idempotency_key,
            max_attempts=max_attempts,
            scheduled_at=scheduled_at,
            expires_at=expires_at,
            metadata=metadata,
        )
        return await _run(call, session)

    async def notify_many(
        self, specs: Iterable[NewDelivery], *, session: AsyncSession | None = None
    ) -> list[Delivery]:
        """Record and queue many deliveries (see :meth:`Chimeway.notify_many`), awaiting."""
        return await _run(functools.partial(self.engine.notify_many, list(specs)), session)

    async def resend(
        self, delivery_id: UUID, *, session: AsyncSession | None = None, by: str | None = None
    ) -> Resent:
        """Resend a delivery that ended unsent (see :meth:`Chimeway.resend`), awaiting."""
        return await _run(functools.partial(self.engine.resend, delivery_id, by=by), session)

    async def get(self, delivery_id: UUID) -> DeliveryHistory:
        """The delivery with its attempts and journal (see :meth:`Chimeway.get`)."""
        return await asyncio.to_thread(self.engine.get, delivery_id)

    async def cancel(self, delivery_id: UUID, *, by: str | None = None) -> Delivery:
        """Cancel a live delivery (see :meth:`Chimeway.cancel`)."""
        return await asyncio.to_thread(functools.partial(self.engine.cancel, delivery_id, by=by))

    async def explain(self, delivery_id: UUID) -> list[str]:
        """Why the delivery is where it is (see :meth:`Chimeway.explain`)."""
        return await asyncio.to_thread(self.engine.explain, delivery_id)


async def _run(call: Callable[..., _T], session: AsyncSession | None) -> _T:
    """``call`` in ``session``'s transaction through its greenlet bridge, or in a thread."""
    if session is None:
        return await asyncio.to_thread(call)
    run_sync = getattr(session, "run_sync", None)
    if not callable(run_sync) or not isinstance(getattr(session, "sync_session", None), Session):
        raise TypeError(
            f"session must be a sqlalchemy.ext.asyncio.AsyncSession, not {type(session).__name__}"
        )
    result: _T = await run_sync(lambda sync_session: call(session=sync_session))
    return result
