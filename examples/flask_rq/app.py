"""A Flask application that notifies inside its own transactions.

``POST /signup`` writes a user and notifies the welcome email in the same
transaction, through Flask-SQLAlchemy's ``db.session``: the email is queued
when the request commits, and a request that fails leaves neither user nor
notification. ``POST /invite`` writes each invitation in a savepoint: an
address already invited rolls back its savepoint, its invitation and its
notification with it, and the rest are committed and sent, with the
inviter's own notification written before the first savepoint.
"""

from __future__ import annotations

import os

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from examples.flask_rq.notify import engine


class Base(DeclarativeBase):
    """The application's models."""


db = SQLAlchemy(model_class=Base)


class User(db.Model):  # type: ignore[name-defined,misc]
    """Someone who signed up."""

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(unique=True)
    name: Mapped[str]


class Invitation(db.Model):  # type: ignore[name-defined,misc]
    """An address invited once."""

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(unique=True)


def create_app(database_url: str | None = None) -> Flask:
    """The application, on ``database_url`` (default ``$DATABASE_URL``)."""
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url or os.environ["DATABASE_URL"]
    db.init_app(app)

    @app.post("/signup")
    def signup() -> ResponseReturnValue:
        data = request.get_json()
        user = User(email=data["email"], name=data["name"])
        db.session.add(user)
        try:
            db.session.flush()  # the unique email is checked here
        except IntegrityError:
            db.session.rollback()
            return jsonify(error="email taken"), 409
        engine.notify(
            "email",
            user.email,
            {"name": user.name},
            idempotency_key=f"welcome-{user.id}",
            session=db.session,  # the user's transaction: queued when it commits
        )
        if data.get("fail_after_notify"):
            raise RuntimeError("the request fails after notifying")  # rolled back: nothing sent
        db.session.commit()
        return jsonify(id=user.id), 201

    @app.post("/invite")
    def invite() -> ResponseReturnValue:
        data = request.get_json()
        engine.notify(
            "email",
            data["inviter"],
            {"name": data["inviter"].split("@")[0]},
            idempotency_key=f"invites-sent-{data['inviter']}",
            session=db.session,  # the request's transaction, outside every savepoint
        )
        invited = []
        for address in data["emails"]:
            savepoint = db.session.begin_nested()  # one savepoint per invitation
            try:
                db.session.add(Invitation(email=address))
                db.session.flush()
            except IntegrityError:
                savepoint.rollback()  # invited before
                continue
            engine.notify(
                "email",
                address,
                {"name": address.split("@")[0]},
                idempotency_key=f"invite-{address}",
                session=db.session,
            )
            if address.startswith("bounce"):
                savepoint.rollback()  # the invitation goes, and its notification with it
                continue
            savepoint.commit()
            invited.append(address)
        db.session.commit()
        return jsonify(invited=invited), 201

    return app
