"""A FastAPI application that notifies inside its async SQLAlchemy transactions.

``POST /orders`` writes an order and notifies its confirmation in the same
``AsyncSession`` transaction: the email is queued on Celery when the
request commits, and a request that fails leaves neither order nor
notification. ``POST /orders/batch`` writes each order in a savepoint: one
that is refused rolls back its own order and notification, and the others
are committed and sent.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from examples.fastapi_celery.notify import notifications


class Base(DeclarativeBase):
    """The application's models."""


class Order(Base):
    """An order placed."""

    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str]
    item: Mapped[str]


async def session(request: Request) -> AsyncIterator[AsyncSession]:
    """The request's session; closed after the request, rolling back what it did not commit."""
    async with request.app.state.sessions() as current:
        yield current


Session = Annotated[AsyncSession, Depends(session)]


class NewOrder(BaseModel):
    """An order as the client sends it."""

    email: str
    item: str
    fail_after_notify: bool = False


async def record(order: NewOrder, session: AsyncSession) -> Order:
    """Write ``order`` and notify its confirmation, both in ``session``'s transaction."""
    row = Order(email=order.email, item=order.item)
    session.add(row)
    await session.flush()
    await notifications.notify(
        "email",
        order.email,
        {"order": row.id, "item": order.item},
        idempotency_key=f"order-{row.id}",
        session=session,  # the order's transaction: queued when it commits
    )
    return row


def create_app(database_url: str | None = None) -> FastAPI:
    """The application, on ``database_url`` (default ``$ASYNC_DATABASE_URL``)."""
    database = create_async_engine(database_url or os.environ["ASYNC_DATABASE_URL"])
    app = FastAPI()
    app.state.database = database
    app.state.sessions = async_sessionmaker(database, expire_on_commit=False)

    @app.post("/orders", status_code=201)
    async def place(order: NewOrder, session: Session) -> dict[str, int]:
        row = await record(order, session)
        if order.fail_after_notify:
            raise HTTPException(500, "the request fails after notifying")  # rolled back
        await session.commit()
        return {"id": row.id}

    @app.post("/orders/batch", status_code=201)
    async def place_many(orders: list[NewOrder], session: Session) -> dict[str, list[int]]:
        placed = []
        for order in orders:
            savepoint = await session.begin_nested()  # one savepoint per order
            row = await record(order, session)
            if order.item == "out of stock":
                await savepoint.rollback()  # the order goes, and its notification with it
                continue
            await savepoint.commit()
            placed.append(row.id)
        await session.commit()
        return {"placed": placed}

    return app
