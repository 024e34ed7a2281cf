"""The console's actions: cancel, resend (one or a filtered set), reveal a payload, rescue.

Theory of operation
-------------------
Each action is a GET that shows what it will do and a confirmation form, and
a POST that does it (the console checked the CSRF token and read-only mode
before). The POST acts through the engine's own functions
(:meth:`Chimeway.cancel <chimeway_core.engine.Chimeway.cancel>`,
:meth:`~chimeway_core.engine.Chimeway.resend`,
:meth:`~chimeway_core.engine.Chimeway.rescue`), so telemetry and fencing are
the command line's, and names the actor, which the journal records. It
answers with a 303 to the page to look at next and a flash message; a
refusal of the engine (already terminal, not resendable) is a flash too.
The reveal is the exception: it journals the reveal, then answers with the
detail page showing the payload, for that response only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from chimeway_core.errors import ChimewayError
from chimeway_web import pages, queries
from chimeway_web.http import Response, Router
from chimeway_web.params import FILTER_NAMES, delivery_id_of, filters_of

if TYPE_CHECKING:
    from chimeway_web.console import Console, Context

__all__ = ["BULK_LIMIT", "route"]

#: The most deliveries one bulk resend resends; a larger set takes several.
BULK_LIMIT: Final = 1000

_WHAT: Final = {
    "cancel": (
        "Cancel this delivery",
        "It moves to cancelled (reason: cancelled); a worker holding it is fenced off.",
    ),
    "resend": (
        "Resend this delivery",
        "A copy is created and queued; the original stays as it is.",
    ),
    "reveal": (
        "Reveal this delivery's payload",
        "The payload is shown once, and the reveal is written into the journal with your name.",
    ),
}


def route(router: Router, console: Console) -> None:
    """Add the actions' confirmation pages and their POSTs to ``router``."""
    for action in _WHAT:
        router.add(
            f"/deliveries/<id>/{action}",
            {
                "GET": lambda c, id, action=action: _confirm_one(console, c, id, action),
                "POST": lambda c, id, action=action: _act_one(console, c, id, action),
            },
        )
    router.add(
        "/resend", {"GET": lambda c: _confirm_bulk(console, c), "POST": lambda c: _bulk(console, c)}
    )
    router.add(
        "/rescue",
        {"GET": lambda c: _confirm_rescue(console, c), "POST": lambda c: _rescue(console, c)},
    )


def _confirm_one(console: Console, context: Context, id: str, action: str) -> Response:
    delivery_id = delivery_id_of(id)
    found = console.store.get(delivery_id)
    if found is None:
        pages.detail_page(console, context, id)  # raises the 404
    title, what = _WHAT[action]
    return console.render(
        context,
        "confirm.html",
        title=title,
        what=what,
        delivery=found,
        action_url=context.request.url(f"/deliveries/{delivery_id}/{action}"),
        back_url=context.request.url(f"/deliveries/{delivery_id}"),
        count=None,
        hidden={},
    )


def _act_one(console: Console, context: Context, id: str, action: str) -> Response:
    delivery_id = delivery_id_of(id)
    by = console.who(context.request)
    engine = console.engine
    back = f"/deliveries/{delivery_id}"
    try:
        match action:
            case "cancel":
                engine.cancel(delivery_id, by=by)
                message = f"Cancelled {delivery_id}."
            case "resend":
                resent = engine.resend(delivery_id, by=by)
                message = (
                    f"Resent as {resent.copy.id}."
                    if resent.created
                    else f"Already resent as {resent.copy.id}."
                )
            case _:
                console.store.note_revealed(delivery_id, now=engine.clock.now(), by=by)
                return pages.detail_page(console, context, id, revealed=True)
    except ChimewayError as error:
        if console.store.get(delivery_id) is None:
            return pages.detail_page(console, context, id)  # the 404
        message = f"Not done: {error}"
    return console.flash_and_redirect(context, message, back)


def _confirm_bulk(console: Console, context: Context) -> Response:
    query = context.request.query
    filters = filters_of(query)
    count = queries.count_resendable(console.store, filters)
    echoed = {name: query.get(name, "") for name in FILTER_NAMES}
    return console.render(
        context,
        "confirm.html",
        title="Resend the matching deliveries",
        what=(
            "Every matching delivery that ended unsent (cancelled or suppressed) and is no "
            f"copy itself gets a copy, at most {BULK_LIMIT} per run."
        ),
        delivery=None,
        count=count,
        action_url=context.request.url("/resend", echoed),
        back_url=context.request.url("/deliveries", echoed),
        hidden={},
    )


def _bulk(console: Console, context: Context) -> Response:
    query = context.request.query
    filters = filters_of(query)
    by = console.who(context.request)
    resent = failed = 0
    for delivery_id in queries.resendable_ids(console.store, filters, limit=BULK_LIMIT):
        try:
            if console.engine.resend(delivery_id, by=by).created:
                resent += 1
        except ChimewayError:
            failed += 1
    echoed = {name: query.get(name, "") for name in FILTER_NAMES}
    message = f"Resent {resent} deliveries" + (f"; {failed} refused." if failed else ".")
    path = context.request.url("/deliveries", echoed).removeprefix(context.request.root)
    return console.flash_and_redirect(context, message, path)


def _confirm_rescue(console: Console, context: Context) -> Response:
    return console.render(
        context,
        "confirm.html",
        title="Run the rescuer now",
        what=(
            "Attempts of dead workers are resolved as unknown, stranded deliveries are queued "
            "again, and the outbox is relayed: what a worker's rescuer does every minute."
        ),
        delivery=None,
        count=None,
        action_url=context.request.url("/rescue"),
        back_url=context.request.url("/"),
        hidden={},
    )


def _rescue(console: Console, context: Context) -> Response:
    try:
        report = console.engine.rescue()
    except ChimewayError as error:
        return console.flash_and_redirect(context, f"Rescue failed: {error}", "/")
    message = (
        f"Rescue: {report.resolved} resolved, {report.requeued} requeued, "
        f"{report.relayed} relayed, {report.pruned} pruned, {report.pending} pending."
    )
    return console.flash_and_redirect(context, message, "/")
