"""The console's pages, which only read: overview, deliveries, one delivery, channels.

Each handler takes the request's :class:`~chimeway_web.console.Context` and
renders one template with values made here. Recipients reach templates raw
and are masked there (the ``masked`` filter); payloads are passed only on
the one response that follows a journaled reveal.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final
from uuid import UUID

import attrs

from chimeway_core.dispatch import match_row
from chimeway_core.outcomes import Outcome
from chimeway_core.records import Attempt, DeliveryHistory, JournalEntry
from chimeway_core.states import DeliveryStatus
from chimeway_web import queries
from chimeway_web.http import HTTPError, Response, Router
from chimeway_web.params import FILTER_NAMES, cursor_of, delivery_id_of, filters_of, limit_of

if TYPE_CHECKING:
    from chimeway_web.console import Console, Context

__all__ = ["AttemptView", "chart", "detail_page", "route", "when"]

#: The chart's size in SVG user units.
_CHART_W: Final = 360
_CHART_H: Final = 80
_OUTCOMES: Final = (Outcome.SUCCEEDED, Outcome.FAILED, Outcome.UNKNOWN)


def when(value: datetime | None) -> str:
    """A timestamp as pages show it: ISO 8601 UTC to the second, or ``-``."""
    return "-" if value is None else value.isoformat(timespec="seconds")


def route(router: Router, console: Console) -> None:
    """Add the reading pages to ``router``."""
    router.add("/", {"GET": lambda c: _overview(console, c)})
    router.add("/deliveries", {"GET": lambda c: _deliveries(console, c)})
    router.add("/deliveries/<id>", {"GET": lambda c, id: detail_page(console, c, id)})
    router.add("/channels", {"GET": lambda c: _channels(console, c)})


# ------------------------------------------------------------------ overview


def chart(series: Sequence[tuple[datetime, Mapping[Outcome | None, int]]]) -> list[dict[str, Any]]:
    """The attempts chart's bars: per bucket and outcome, stacked, in SVG coordinates."""
    if not series:
        return []
    top = max(1, *(sum(counts.values()) for _, counts in series))
    width = _CHART_W / len(series)
    bars: list[dict[str, Any]] = []
    for index, (start, counts) in enumerate(series):
        y = float(_CHART_H)
        for outcome in (*_OUTCOMES, None):
            count = counts.get(outcome, 0)
            if not count:
                continue
            height = _CHART_H * count / top
            y -= height
            bars.append(
                {
                    "x": round(index * width + 1, 1),
                    "y": round(y, 1),
                    "w": round(width - 2, 1),
                    "h": round(height, 1),
                    "outcome": "in_flight" if outcome is None else outcome.value,
                    "title": f"{when(start)}: {count} {outcome or 'in flight'}",
                }
            )
    return bars


def _overview(console: Console, context: Context) -> Response:
    now = console.engine.clock.now()
    data = queries.overview(console.store, now=now)
    gauges = data.gauges
    by_channel: dict[str, dict[str, int]] = {}
    for (channel, status), count in sorted(gauges.live_by_channel.items()):
        by_channel.setdefault(channel, {})[status.value] = count
    counts = sorted(gauges.counts.items(), key=lambda item: (item[0][0].value, item[0][1] or ""))
    statuses: dict[str, int] = {}
    for (status, _), count in counts:
        statuses[status.value] = statuses.get(status.value, 0) + count
    fragment = context.request.query.get("fragment") == "overview"
    return console.render(
        context,
        "overview_fragment.html" if fragment else "overview.html",
        now=now,
        gauges=gauges,
        statuses=statuses,
        counts=[(s.value, r, n) for (s, r), n in counts],
        by_channel=by_channel,
        hour={_name(o): n for o, n in data.attempts_hour.items()},
        day={_name(o): n for o, n in data.attempts_day.items()},
        outcomes=[*(o.value for o in _OUTCOMES), "in_flight"],
        bars=chart(data.series),
        chart_w=_CHART_W,
        chart_h=_CHART_H,
    )


def _name(outcome: Outcome | None) -> str:
    return "in_flight" if outcome is None else outcome.value


# ------------------------------------------------------------------ deliveries


def _deliveries(console: Console, context: Context) -> Response:
    query = context.request.query
    filters = filters_of(query)
    limit = limit_of(query)
    page = queries.list_deliveries(console.store, filters, after=cursor_of(query), limit=limit)
    echoed = {name: query.get(name, "") for name in FILTER_NAMES}
    following = None
    if page.next is not None:
        following = context.request.url(
            "/deliveries", {**echoed, "limit": query.get("limit"), "after": page.next.encode()}
        )
    return console.render(
        context,
        "deliveries.html",
        deliveries=page.deliveries,
        echoed=echoed,
        limit=query.get("limit", ""),
        statuses=[s.value for s in DeliveryStatus],
        next_url=following,
        resend_url=context.request.url("/resend", echoed),
        first_url=context.request.url("/deliveries", echoed) if "after" in query else None,
    )


# ------------------------------------------------------------------ detail


@attrs.frozen(kw_only=True)
class AttemptView:
    """One attempt as the detail page shows it, with the dispatch row its record fired."""

    attempt: Attempt
    row: str | None
    error: str | None
    response: str | None


@attrs.frozen(kw_only=True)
class JournalView:
    """One journal entry as the detail page shows it."""

    entry: JournalEntry
    by: str | None
    policy: str | None
    row: str | None
    detail: str


def _dispatch_row(entry: JournalEntry, max_attempts: int) -> str | None:
    """The dispatch row a recorded attempt's transition fired, recomputed from the journal.

    The engine chose the action by :func:`~chimeway_core.dispatch.match_row`
    on the attempt's outcome, error class, the status it led to, its number
    and ``max_attempts``; all are in the entry, so the same lookup names the
    same row.
    """
    number, outcome = entry.detail.get("attempt"), entry.detail.get("outcome")
    if type(number) is not int or number < 1 or entry.to_status is None:
        return None
    if not isinstance(outcome, str):
        return None
    try:
        _, row = match_row(
            Outcome(outcome), entry.detail.get("error_class"), entry.to_status, number, max_attempts
        )
    except (ValueError, TypeError):
        return None
    return row


def _detail_text(detail: Mapping[str, Any]) -> str:
    rest = {k: v for k, v in detail.items() if k not in {"by", "policy"}}
    return json.dumps(rest, sort_keys=True, default=str) if rest else ""


def _scrubber(recipient: str, mask: Callable[[str], str]) -> Callable[[str], str]:
    """Replace the recipient wherever it appears (a provider echoing the address) by its mask."""
    if len(recipient) < 3:  # too short to tell from other text
        return lambda text: text
    masked = mask(recipient)
    return lambda text: text.replace(recipient, masked)


def _history(console: Console, delivery_id: UUID) -> DeliveryHistory:
    found = console.store.history(delivery_id)
    if found is None:
        raise HTTPError(404, "no such delivery")
    return found


def detail_page(
    console: Console,
    context: Context,
    id: str,
    *,
    revealed: bool = False,
) -> Response:
    """One delivery: summary, attempts, journal, explanation, payload (hidden unless revealed)."""
    history = _history(console, delivery_id_of(id))
    delivery = history.delivery
    scrub = _scrubber(delivery.recipient, console.mask_recipient)
    rows: dict[int, str | None] = {}
    journal = []
    for entry in history.journal:
        row = _dispatch_row(entry, delivery.max_attempts)
        number = entry.detail.get("attempt")
        if type(number) is int:
            rows[number] = row
        by, policy = entry.detail.get("by"), entry.detail.get("policy")
        journal.append(
            JournalView(
                entry=entry,
                by=by if isinstance(by, str) else None,
                policy=policy if isinstance(policy, str) else None,
                row=row,
                detail=scrub(_detail_text(entry.detail)),
            )
        )
    attempts = [
        AttemptView(
            attempt=a,
            row=rows.get(a.number),
            error=None if a.error is None else scrub(a.error),
            response=None
            if a.provider_response is None
            else scrub(json.dumps(a.provider_response, sort_keys=True, default=str)),
        )
        for a in history.attempts
    ]
    next_run = None if delivery.is_terminal else delivery.scheduled_at
    payload = None
    if revealed:
        payload = json.dumps(delivery.payload, sort_keys=True, indent=2, default=str)
    live = not delivery.is_terminal
    return console.render(
        context,
        "detail.html",
        delivery=delivery,
        attempts=attempts,
        journal=journal,
        explain=[scrub(line) for line in console.engine.explain(delivery.id)],
        next_run=next_run,
        payload=payload,
        can_cancel=live,
        can_resend=delivery.status.value in {"cancelled", "suppressed"},
        metadata=scrub(json.dumps(dict(delivery.metadata), sort_keys=True, default=str)),
    )


# ------------------------------------------------------------------ channels


def _channels(console: Console, context: Context) -> Response:
    engine = console.engine
    now = engine.clock.now()
    health = queries.channel_health(
        console.store, now=now, window=timedelta(hours=24), channels=list(engine.channels)
    )
    configured = []
    for item in health:
        channel = engine.channels.get(item.channel)
        retry = engine.channel_retry.get(item.channel, engine.retry)
        timeout = None if channel is None else channel.timeout
        configured.append(
            {
                "health": item,
                "known": channel is not None,
                "guarantee": None if channel is None else channel.guarantee.value,
                "timeout": timeout,
                "lease": None if timeout is None else timeout + engine.lease_margin,
                "retry": retry,
                "rates": {o.value: item.rate(o) for o in _OUTCOMES},
                "counts": {_name(o): n for o, n in item.outcomes.items()},
            }
        )
    return console.render(context, "channels.html", channels=configured, now=now)
