"""What the ledger checks before it writes, and how it makes untrusted text storable.

Theory of operation
-------------------
Every value a caller hands the ledger is checked here before anything is
written: a bad one raises a specific
:class:`~chimeway_core.errors.InvalidDeliveryError` (or a subclass) naming
the field, and nothing is written. The same rules hold on every database:
PostgreSQL cannot store NUL or a lone surrogate, so neither database accepts
them, and a delivery accepted by SQLite in tests is accepted in production.

What a *channel* returns (provider responses, error text) is never refused:
:func:`sanitize` and :func:`truncate` make it storable instead, because an
attempt's outcome must be recorded whatever the provider said.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final, TypeAlias
from uuid import UUID

from sqlalchemy.orm import Session, scoped_session

from chimeway_core._checks import whole
from chimeway_core.errors import InvalidDeliveryError, PayloadNotSerializableError

__all__ = [
    "MAX_JSON_DEPTH",
    "AnySession",
    "aware",
    "check_encodable",
    "check_id",
    "check_limit",
    "check_session",
    "check_text",
    "clean_text",
    "json_size",
    "json_value",
    "plain_json",
    "sanitize",
    "truncate",
]

# How deep JSON may nest (payloads, metadata, provider responses): far below
# Python's recursion limit, so validating, storing and reading never overflow.
MAX_JSON_DEPTH: Final = 128
#: Integers in a payload fit in 64 bits (signed): what JSON readers keep whole.
JSON_INT_LIMIT: Final = 2**63


def aware(value: object, field: str) -> datetime:
    """``value`` if it is a timezone-aware datetime, else :class:`InvalidDeliveryError`."""
    if not isinstance(value, datetime):
        raise InvalidDeliveryError(field, f"must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidDeliveryError(field, "must be a timezone-aware datetime, got a naive one")
    return value


def check_id(value: object) -> UUID:
    """``value`` if it is a :class:`uuid.UUID`; else :class:`TypeError`."""
    # A str would be matched by no row on SQLite and fail to bind on
    # PostgreSQL: name the mistake instead.
    if not isinstance(value, UUID):
        raise TypeError(f"delivery_id must be a uuid.UUID, not {type(value).__name__}")
    return value


def check_limit(name: str, value: object) -> int:
    """``value`` if it is an int >= 1; else :class:`ValueError` naming ``name``."""
    # LIMIT 0 would make a relay loop forever and a negative one means "no
    # limit" on SQLite but an error on PostgreSQL: refuse both everywhere.
    return whole(name, value, minimum=1)


#: What ``session=`` accepts: a session, or a ``scoped_session`` standing for its current one.
AnySession: TypeAlias = Session | scoped_session[Any]


def check_session(session: object) -> Session:
    """The ORM session to write through; :class:`TypeError` if ``session`` is none.

    A :class:`~sqlalchemy.orm.Session`, or a
    :class:`~sqlalchemy.orm.scoped_session` (Flask-SQLAlchemy's ``db.session``
    is one), which stands for its registry's current session.
    """
    if isinstance(session, scoped_session):
        session = session()
    if type(session).__module__.startswith("sqlalchemy.ext.asyncio"):
        raise TypeError(
            f"session is a {type(session).__name__}: await the engine through "
            "chimeway_core.aio.AsyncChimeway, whose methods take it"
        )
    if not isinstance(session, Session):
        raise TypeError(
            "session must be a sqlalchemy.orm.Session or scoped_session, "
            f"not {type(session).__name__}"
        )
    return session


def check_text(value: object, field: str, *, max_length: int, optional: bool = False) -> None:
    """Raise unless ``value`` is a non-empty, storable str of at most ``max_length``."""
    if (
        type(value) is str
        and 0 < len(value) <= max_length
        and value.isascii()  # so no lone surrogate
        and "\x00" not in value
    ):
        return
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise InvalidDeliveryError(field, f"must be a string, not {type(value).__name__}")
    if not value:
        raise InvalidDeliveryError(field, "must not be empty")
    if len(value) > max_length:
        raise InvalidDeliveryError(field, f"is {len(value)} characters, over {max_length}")
    check_encodable(value, field)


def check_encodable(value: str, field: str) -> None:
    """Raise unless ``value`` is storable on every database (UTF-8, no NUL)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidDeliveryError(
            field, "is not valid UTF-8 (it contains a lone surrogate)"
        ) from None
    if "\x00" in value:
        # PostgreSQL text and JSON cannot hold NUL; refuse it on every database
        # so a delivery accepted by SQLite in tests is accepted in production.
        raise InvalidDeliveryError(field, "contains a NUL character, which cannot be stored")


def json_value(value: object, field: str, depth: int = 0) -> Any:
    """Return a plain-JSON copy of ``value`` (tuples become lists), or raise.

    ``field`` names where the value is, by position: a mapping's key is
    shown as its index (``payload[key 0]``), never its text, which may be
    personal data.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not -JSON_INT_LIMIT <= value < JSON_INT_LIMIT:
            # Past 64 bits most JSON readers lose it, and past 4,300 digits
            # Python cannot even write it.
            raise PayloadNotSerializableError(
                field, "holds an integer beyond 64 bits; send it as a string"
            )
        return value
    if isinstance(value, str):
        check_encodable(value, field)
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PayloadNotSerializableError(field, f"{value!r} is not a JSON number")
        return value
    if isinstance(value, Mapping | list | tuple) and depth >= MAX_JSON_DEPTH:
        # Deeper would hit the recursion limit here or in a worker's JSON decoder.
        raise PayloadNotSerializableError(
            field.split("[", 1)[0], f"is nested more than {MAX_JSON_DEPTH} levels deep"
        )
    if isinstance(value, Mapping):
        copy: dict[str, Any] = {}
        for index, (key, item) in enumerate(value.items()):
            if not isinstance(key, str):
                raise PayloadNotSerializableError(
                    field, f"has a {type(key).__name__} key; JSON object keys are strings"
                )
            check_encodable(key, f"{field} key")
            copy[key] = json_value(item, f"{field}[key {index}]", depth + 1)
        return copy
    if isinstance(value, list | tuple):
        return [
            json_value(item, f"{field}[{index}]", depth + 1) for index, item in enumerate(value)
        ]
    raise PayloadNotSerializableError(field, f"holds a {type(value).__name__}, not a JSON value")


_COMPACT: Final = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False, check_circular=False
)
# Digits enough for an integer past 64 bits (or one near it: then the full check decides).
_LONG_NUMBER: Final = re.compile(r"\d{19}")


def plain_json(value: object, field: str) -> tuple[Any, int]:
    """:func:`json_value` of ``value`` and :func:`json_size` of it, in one pass where it can.

    The value is dumped once by the C encoder and read back: when the copy
    read back equals the value and its text shows nothing the full walk would
    refuse (NUL, a lone surrogate, deep nesting, a long integer), that copy
    is the plain-JSON copy. Anything else (tuples, keys that are no string,
    a value the encoder refuses) takes the full walk, which says what is
    wrong, where.
    """
    if type(value) is dict and not value:
        return {}, 2  # most metadata
    try:
        text = _COMPACT.encode(value)
    except (TypeError, ValueError, RecursionError):
        text = None
    if (
        text is not None
        and "\\u0000" not in text
        and text.count("[") + text.count("{") <= MAX_JSON_DEPTH
        and _LONG_NUMBER.search(text) is None
    ):
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            pass  # a lone surrogate: the full walk names it
        else:
            copy = json.loads(text)
            if type(copy) is type(value) and copy == value:
                return copy, size
    copy = json_value(value, field)
    return copy, json_size(copy)


def json_size(value: Any) -> int:
    """The size in bytes of ``value`` dumped as compact UTF-8 JSON."""
    if not value and isinstance(value, dict | list):
        return 2  # "{}" or "[]": most metadata, dumped here for every delivery
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def clean_text(text: str) -> str:
    """Make text storable: replace lone surrogates and NUL (never reject)."""
    cleaned = text.encode("utf-8", "replace").decode("utf-8")
    return cleaned.replace("\x00", "\ufffd")


def sanitize(value: object, depth: int = 0) -> Any:
    """Best-effort plain-JSON copy for provider responses: never raises."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return (
            value
            if -JSON_INT_LIMIT <= value < JSON_INT_LIMIT
            else f"<{value.bit_length()}-bit int>"
        )
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, Mapping | list | tuple) and depth >= MAX_JSON_DEPTH:
        return f"<nested more than {MAX_JSON_DEPTH} levels deep>"
    if isinstance(value, Mapping):
        return {clean_text(str(key)): sanitize(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [sanitize(item, depth + 1) for item in value]
    return f"<{type(value).__qualname__}>"


def truncate(text: str | None, limit: int) -> str | None:
    """``text`` made storable and cut to ``limit`` characters, saying how much was cut."""
    if text is None:
        return None
    text = clean_text(text)
    if len(text) <= limit:
        return text
    marker = f"... [truncated {len(text) - limit} chars]"
    return text[: max(limit - len(marker), 0)] + marker
