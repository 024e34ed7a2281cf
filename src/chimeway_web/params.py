"""The delivery list's query parameters, read and checked: a bad one is a 400 naming it.

The same parameters select the deliveries a bulk resend acts on, so the
list, its dry run and the resend read them through :func:`filters_of`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final
from uuid import UUID

from chimeway_core.ledger.schema import CHANNEL_LENGTH, KEY_LENGTH, REASON_LENGTH, RECIPIENT_LENGTH
from chimeway_core.states import DeliveryStatus
from chimeway_web.http import HTTPError
from chimeway_web.queries import DEFAULT_LIMIT, MAX_LIMIT, Cursor, DeliveryFilters

__all__ = ["FILTER_NAMES", "cursor_of", "delivery_id_of", "filters_of", "limit_of"]

#: The list's filter parameters, in the order the form shows them.
FILTER_NAMES: Final = (
    "status",
    "reason",
    "channel",
    "recipient",
    "notification_key",
    "idempotency_key",
    "since",
    "until",
)
_LENGTHS: Final = {
    "reason": REASON_LENGTH,
    "channel": CHANNEL_LENGTH,
    "recipient": RECIPIENT_LENGTH,
    "notification_key": KEY_LENGTH,
    "idempotency_key": KEY_LENGTH,
}


def _bad(name: str, why: str) -> HTTPError:
    return HTTPError(400, f"bad parameter {name!r}: {why}")


def _moment(name: str, text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise _bad(name, "not an ISO 8601 date and time") from None
    if value.tzinfo is None:
        # The form's datetime-local input has no zone: the console speaks UTC.
        value = value.replace(tzinfo=UTC)
    return value


def filters_of(query: Mapping[str, str]) -> DeliveryFilters:
    """The filters ``query`` names (an empty value is no filter); :class:`HTTPError` 400 if bad."""
    given = {name: query[name].strip() for name in FILTER_NAMES if query.get(name, "").strip()}
    status = None
    if "status" in given:
        try:
            status = DeliveryStatus(given["status"])
        except ValueError:
            choices = ", ".join(s.value for s in DeliveryStatus)
            raise _bad("status", f"not one of {choices}") from None
    for name, length in _LENGTHS.items():
        if len(given.get(name, "")) > length:
            raise _bad(name, f"longer than {length} characters")
    since = _moment("since", given["since"]) if "since" in given else None
    until = _moment("until", given["until"]) if "until" in given else None
    return DeliveryFilters(
        status=status,
        reason=given.get("reason"),
        channel=given.get("channel"),
        recipient=given.get("recipient"),
        notification_key=given.get("notification_key"),
        idempotency_key=given.get("idempotency_key"),
        since=since,
        until=until,
    )


def limit_of(query: Mapping[str, str]) -> int:
    """The page size ``limit`` asks for (default :data:`DEFAULT_LIMIT`); 400 outside 1..max."""
    text = query.get("limit", "").strip()
    if not text:
        return DEFAULT_LIMIT
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_LIMIT:
        raise _bad("limit", f"not a whole number from 1 to {MAX_LIMIT}")
    return int(text)


def cursor_of(query: Mapping[str, str]) -> Cursor | None:
    """The page cursor ``after`` carries, or ``None``; 400 if it is not one the console made."""
    text = query.get("after", "").strip()
    if not text:
        return None
    try:
        return Cursor.decode(text)
    except ValueError:
        raise _bad("after", "not a page cursor of this console") from None


def delivery_id_of(text: str) -> UUID:
    """The delivery id in a path; :class:`HTTPError` 404 if it is none."""
    try:
        return UUID(text)
    except ValueError:
        raise HTTPError(404, "no such delivery") from None
