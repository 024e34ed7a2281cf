"""The actions: each changes the ledger through the engine and journals who did it."""

from __future__ import annotations

from uuid import UUID

import httpx
import pytest

from chimeway_core.engine import Chimeway
from chimeway_core.records import JournalKind
from chimeway_core.states import DeliveryStatus
from chimeway_web import Console
from tests.web.conftest import PAYLOAD_CANARY, client_of, csrf_of


def _post(client: httpx.Client, path: str) -> httpx.Response:
    """Open the confirmation page, then confirm with the token it carries."""
    page = client.get(path)
    assert 200 == page.status_code
    assert 'data-testid="confirm"' in page.text
    return client.post(path, data={"csrf_token": csrf_of(page.text)})


def test_cancel_cancels_through_the_engine_and_journals_the_actor(
    client: httpx.Client, engine: Chimeway, seeded: dict[str, UUID]
) -> None:
    """303 to the detail page, flash on arrival, cancelled, the journal names alice."""
    delivery_id = seeded["ready"]
    response = _post(client, f"/deliveries/{delivery_id}/cancel")
    assert (303, f"/deliveries/{delivery_id}") == (
        response.status_code,
        response.headers["location"].removeprefix("http://console"),
    )
    history = engine.get(delivery_id)
    assert DeliveryStatus.CANCELLED is history.delivery.status
    assert {"by": "alice"} == history.journal[-1].detail
    arrived = client.get(response.headers["location"]).text
    assert 'data-testid="flash"' in arrived
    assert 'data-testid="flash"' not in client.get(f"/deliveries/{delivery_id}").text
    assert any(line.endswith("by alice") for line in engine.explain(delivery_id))


def test_cancelling_a_terminal_delivery_says_why_and_changes_nothing(
    client: httpx.Client, engine: Chimeway, seeded: dict[str, UUID]
) -> None:
    """The engine's refusal becomes the flash message."""
    before = engine.get(seeded["sent"])
    response = _post(client, f"/deliveries/{seeded['sent']}/cancel")
    assert 303 == response.status_code
    assert "Not done" in client.get(response.headers["location"]).text
    assert before == engine.get(seeded["sent"])


def test_resend_makes_a_copy_and_journals_the_actor(
    client: httpx.Client, engine: Chimeway, seeded: dict[str, UUID]
) -> None:
    """The original's resent entry names the copy and alice."""
    response = _post(client, f"/deliveries/{seeded['cancelled']}/resend")
    assert 303 == response.status_code
    [entry] = [e for e in engine.get(seeded["cancelled"]).journal if e.kind is JournalKind.RESENT]
    assert "alice" == entry.detail["by"]
    copy = engine.get(UUID(entry.detail["as"])).delivery
    assert DeliveryStatus.READY is copy.status


def test_bulk_resend_shows_the_dry_run_count_then_resends_them(
    client: httpx.Client, engine: Chimeway, seeded: dict[str, UUID]
) -> None:
    """Four deliveries ended cancelled: the count says 4, the POST resends 4, then 0 are left."""
    path = "/resend?status=cancelled&channel=mail"
    page = client.get(path).text
    assert 'data-testid="dry-run-count">4<' in page
    response = client.post(path, data={"csrf_token": csrf_of(page)})
    assert 303 == response.status_code
    assert "Resent 4 deliveries." in client.get(response.headers["location"]).text
    for name in ("cancelled", "refused", "hostile", "echoed"):
        kinds = [e.kind for e in engine.get(seeded[name]).journal]
        assert JournalKind.RESENT in kinds
    # Resent ones and their copies are no candidates: nothing is left to resend.
    assert 'data-testid="dry-run-count">0<' in client.get(path).text
    client.post(path, data={"csrf_token": csrf_of(page)})
    assert 8 + 4 == len(engine.store.find(limit=100))


def test_reveal_shows_the_payload_once_and_journals_it(
    client: httpx.Client, engine: Chimeway, seeded: dict[str, UUID]
) -> None:
    """The POST's own answer shows the payload; the next view hides it again."""
    delivery_id = seeded["sent"]
    response = _post(client, f"/deliveries/{delivery_id}/reveal")
    assert 200 == response.status_code
    assert PAYLOAD_CANARY in response.text
    last = engine.get(delivery_id).journal[-1]
    assert (JournalKind.REVEALED, {"by": "alice"}) == (last.kind, last.detail)
    assert PAYLOAD_CANARY not in client.get(f"/deliveries/{delivery_id}").text


def test_rescue_runs_the_rescuer_and_reports(client: httpx.Client, seeded: dict[str, UUID]) -> None:
    """303 to the overview with the report in the flash."""
    response = _post(client, "/rescue")
    assert (303, "/") == (
        response.status_code,
        response.headers["location"].removeprefix("http://console"),
    )
    assert "Rescue: " in client.get("/").text


@pytest.mark.parametrize("token", [None, "", "forged.token"])
def test_a_post_without_the_right_csrf_token_is_refused(
    client: httpx.Client, engine: Chimeway, seeded: dict[str, UUID], token: str | None
) -> None:
    """403 and the delivery untouched."""
    delivery_id = seeded["ready"]
    client.get(f"/deliveries/{delivery_id}/cancel")  # the cookie is set
    data = {} if token is None else {"csrf_token": token}
    response = client.post(f"/deliveries/{delivery_id}/cancel", data=data)
    assert 403 == response.status_code
    assert DeliveryStatus.READY is engine.get(delivery_id).delivery.status


def test_another_consoles_token_is_refused(
    engine: Chimeway, console: Console, seeded: dict[str, UUID]
) -> None:
    """A token signed under another secret, sent as cookie and field alike."""
    other = Console(engine, secret="another-secret")
    with client_of(other.wsgi) as foreign, client_of(console.wsgi) as client:
        token = csrf_of(foreign.get(f"/deliveries/{seeded['ready']}/cancel").text)
        client.cookies.set("chimeway_csrf", token)
        response = client.post(f"/deliveries/{seeded['ready']}/cancel", data={"csrf_token": token})
    assert 403 == response.status_code
    assert DeliveryStatus.READY is engine.get(seeded["ready"]).delivery.status


def test_read_only_shows_no_actions_and_refuses_every_post(
    engine: Chimeway, seeded: dict[str, UUID]
) -> None:
    """No action links, no confirm form; a POST with a valid token is still a 403."""
    console = Console(engine, read_only=True)
    with client_of(console.wsgi) as client:
        detail = client.get(f"/deliveries/{seeded['ready']}").text
        assert "data-action=" not in detail
        assert "data-action=" not in client.get("/").text
        page = client.get(f"/deliveries/{seeded['ready']}/cancel").text
        assert 'data-testid="confirm"' not in page
        token = client.cookies["chimeway_csrf"]
        for path in (f"/deliveries/{seeded['ready']}/cancel", "/rescue", "/resend"):
            assert 403 == client.post(path, data={"csrf_token": token}).status_code
    assert DeliveryStatus.READY is engine.get(seeded["ready"]).delivery.status


def test_authorize_false_is_a_403_everywhere(engine: Chimeway, seeded: dict[str, UUID]) -> None:
    """authorize sees the request; saying no refuses pages and actions alike."""
    seen: list[str] = []

    def authorize(request: object) -> bool:
        seen.append(request.path)  # type: ignore[attr-defined]
        return request.headers.get("x-user") == "ops"  # type: ignore[attr-defined]

    console = Console(engine, authorize=authorize)
    with client_of(console.wsgi) as client:
        for path in ("/", "/deliveries", f"/deliveries/{seeded['ready']}", "/channels"):
            assert 403 == client.get(path).status_code
            assert 200 == client.get(path, headers={"x-user": "ops"}).status_code
        assert 403 == client.post("/rescue").status_code
    assert "/channels" in seen


def test_the_default_actor_is_console(engine: Chimeway, seeded: dict[str, UUID]) -> None:
    """Without an actor hook the journal says "console"."""
    with client_of(Console(engine).wsgi) as client:
        _post(client, f"/deliveries/{seeded['ready']}/cancel")
    assert {"by": "console"} == engine.get(seeded["ready"]).journal[-1].detail
