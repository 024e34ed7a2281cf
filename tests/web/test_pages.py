"""Every page renders from a real ledger, on SQLite and PostgreSQL; bad input is a 4xx page."""

from __future__ import annotations

import re
from uuid import UUID, uuid4

import httpx
import pytest

from chimeway_backends.memory import MemoryBackend
from chimeway_core import VirtualClock
from chimeway_core.channels.callable import CallableChannel
from chimeway_core.engine import Chimeway
from chimeway_core.outcomes import Sent
from chimeway_core.store import SQLStore
from chimeway_web import Console
from tests.web.conftest import HOSTILE, PAYLOAD_CANARY, RECIPIENT_CANARY, client_of, notify

PAGES = ("/", "/?fragment=overview", "/deliveries", "/channels")


def _ids(page: str) -> list[str]:
    return re.findall(r'<tr data-delivery-id="([0-9a-f-]+)"', page)


@pytest.mark.parametrize("path", PAGES)
def test_each_page_renders(client: httpx.Client, seeded: dict[str, UUID], path: str) -> None:
    """Overview (and its fragment), deliveries and channels answer 200 with HTML."""
    response = client.get(path)
    assert (200, "text/html; charset=utf-8") == (
        response.status_code,
        response.headers["content-type"],
    )


def test_overview_counts_every_status_and_draws_the_chart(
    client: httpx.Client, seeded: dict[str, UUID]
) -> None:
    """One row per status present, the backlog, live deliveries per channel, the chart's bars."""
    page = client.get("/").text
    statuses = set(re.findall(r'<tr data-status="([a-z]+)"', page))
    assert {"succeeded", "cancelled", "failed", "ready"} == statuses
    for hook in ("backlog", "channel-live", "chart-attempts"):
        assert f'data-testid="{hook}"' in page
    assert "<rect " in page
    fragment = client.get("/?fragment=overview").text
    assert "<nav" not in fragment
    assert 'data-refresh="status-counts"' in fragment


def test_the_list_shows_every_delivery_newest_first_and_filters(
    client: httpx.Client, seeded: dict[str, UUID]
) -> None:
    """No filter: all six; each filter narrows to the deliveries it names."""
    assert 8 == len(_ids(client.get("/deliveries").text))
    cases = {
        "status=cancelled": {
            seeded[name] for name in ("cancelled", "refused", "hostile", "echoed")
        },
        "status=cancelled&reason=cancelled": {seeded["cancelled"]},
        "status=failed": {seeded["retrying"], seeded["echoed-temp"]},
        "reason=permanent_failure": {seeded["refused"], seeded["hostile"], seeded["echoed"]},
        "channel=mail": set(seeded.values()),
        "channel=sms": set(),
        "recipient=bob@example.com": {seeded["refused"]},
        "notification_key=n-1": {seeded["sent"]},
        "idempotency_key=idem-ready": {seeded["ready"]},
        "since=2030-01-01T11:00:00%2B00:00&until=2030-01-01T13:00:00%2B00:00": set(seeded.values()),
        "since=2030-01-01T12:00:01Z": set(),
    }
    for query, expected in cases.items():
        page = client.get(f"/deliveries?{query}").text
        assert {str(i) for i in expected} == set(_ids(page)), query
        assert ('data-testid="result-empty"' in page) == (not expected), query


def test_pages_cover_every_row_once(client: httpx.Client, engine: Chimeway) -> None:
    """130 deliveries (many in one instant) at 25 a page: each shown exactly once, in order."""
    made = {str(notify(engine, f"r{i}@example.com", "ok")) for i in range(130)}
    shown: list[str] = []
    url = "/deliveries?limit=25&channel=mail"
    pages = 0
    while url:
        page = client.get(url).text
        shown += _ids(page)
        pages += 1
        found = re.search(r'<a href="([^"]+)" data-testid="next-page"', page)
        url = found.group(1).replace("&amp;", "&") if found else ""
    assert (6, 130, made) == (pages, len(shown), set(shown))


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("status=bogus", "status"),
        ("since=yesterday", "since"),
        ("until=2030-13-01", "until"),
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=ten", "limit"),
        ("after=not-a-cursor", "after"),
        (f"channel={'x' * 201}", "channel"),
    ],
)
def test_a_bad_parameter_is_a_400_naming_it(
    client: httpx.Client, query: str, parameter: str
) -> None:
    """Never a 500: the page says which parameter is wrong (the bulk resend's filters too)."""
    for path in (
        ("/deliveries", "/resend") if parameter not in {"limit", "after"} else ("/deliveries",)
    ):
        response = client.get(f"{path}?{query}")
        assert 400 == response.status_code
        assert f"bad parameter &#39;{parameter}&#39;" in response.text


@pytest.mark.parametrize("path", ["/deliveries/not-a-uuid", f"/deliveries/{uuid4()}", "/nope"])
def test_an_unknown_page_or_delivery_is_a_404(client: httpx.Client, path: str) -> None:
    """Unknown and malformed ids alike."""
    assert 404 == client.get(path).status_code


def test_unknown_ids_on_action_pages_are_404(client: httpx.Client) -> None:
    """The confirmation pages of a delivery that does not exist."""
    for action in ("cancel", "resend", "reveal"):
        assert 404 == client.get(f"/deliveries/{uuid4()}/{action}").status_code


def test_the_detail_page_shows_attempts_journal_explanation_and_dispatch_rows(
    client: httpx.Client, seeded: dict[str, UUID]
) -> None:
    """The refused delivery: one attempt, its permanent failure, the row that acked it."""
    page = client.get(f"/deliveries/{seeded['refused']}").text
    for hook in ("delivery-summary", "attempts", "journal", "explain", "payload"):
        assert f'data-testid="{hook}"' in page
    assert 1 == len(re.findall(r'<tr data-attempt="\d+"', page))
    assert "permanent_failure" in page
    assert "none (terminal)" in page
    assert "attempt 1 failed/permanent" in page
    retrying = client.get(f"/deliveries/{seeded['retrying']}").text
    assert "2030-01-01T12:01:00+00:00" in retrying  # the next run, 60 s later


def test_the_channels_page_counts_outcomes_and_groups_errors(
    client: httpx.Client, seeded: dict[str, UUID]
) -> None:
    """mail: the three identical refusals are one error row counted three times."""
    page = client.get("/channels").text
    assert '<tr data-channel="mail">' in page
    errors = re.findall(r'<tr data-channel-error="mail">(.*?)</tr>', page, re.S)
    assert 3 == len(errors)  # the refusal, and each recipient's "busy"
    assert 1 == sum('<td class="num">3</td>' in row for row in errors)


def test_static_files_are_served(client: httpx.Client) -> None:
    """The stylesheet and the script; nothing else under /static."""
    assert "text/css" in client.get("/static/console.css").headers["content-type"]
    assert "javascript" in client.get("/static/console.js").headers["content-type"]
    assert 404 == client.get("/static/../console.py").status_code
    assert 404 == client.get("/static/secret.txt").status_code


def test_canaries_and_hostile_text_never_reach_a_page_raw(
    client: httpx.Client, seeded: dict[str, UUID]
) -> None:
    """No payload, no recipient's local part, no live markup, no credentials, controls visible."""
    paths = [*PAGES, "/deliveries?recipient=" + HOSTILE]
    for delivery_id in seeded.values():
        paths += [f"/deliveries/{delivery_id}"]
        paths += [f"/deliveries/{delivery_id}/{a}" for a in ("cancel", "resend", "reveal")]
    for path in paths:
        page = client.get(path).text
        assert PAYLOAD_CANARY not in page, path
        assert RECIPIENT_CANARY not in page, path
        assert "<script>alert" not in page, path
        assert "<img src=x" not in page, path
        assert "<b>refused</b>" not in page, path
        assert "s3cr3t-pw" not in page, path
        assert "\x07" not in page, path
        assert "\x1b" not in page, path
    detail = client.get(f"/deliveries/{seeded['hostile']}").text
    assert "&lt;img src=x onerror=alert(1)&gt; bell\\x07" in detail
    assert "https://***@api.example.com/v1" in detail
    assert "\\x1b[31m" in detail
    assert "r•••@example.com" in client.get(f"/deliveries/{seeded['sent']}").text


def test_the_overview_counts_attempts_per_outcome(
    client: httpx.Client, seeded: dict[str, UUID]
) -> None:
    """Six attempts in the last hour: one succeeded, five failed; the chart has their bars."""
    page = client.get("/").text
    rows = dict(re.findall(r'<tr data-outcome="([a-z_]+)">(.*?)</tr>', page, re.S))
    assert re.search(r">1</td><td class=\"num\">1</td>$", rows["succeeded"].strip())
    assert re.search(r">5</td><td class=\"num\">5</td>$", rows["failed"].strip())
    assert 2 == len(re.findall(r'<rect class="(?:succeeded|failed)"', page))


def test_a_namespaced_store_shows_only_its_own_deliveries(
    store: SQLStore, clock: VirtualClock
) -> None:
    """Two ledgers on one database: the console over the namespace sees that one only."""
    spaced = SQLStore(store.engine, namespace="console_ns")
    spaced.create_all()
    try:
        outside = notify(
            Chimeway(store, MemoryBackend(clock), {"mail": CallableChannel(_ok)}, clock=clock),
            "out@example.com",
            "ok",
        )
        engine = Chimeway(spaced, MemoryBackend(clock), {"mail": CallableChannel(_ok)}, clock=clock)
        inside = notify(engine, "in@example.com", "ok")
        engine.perform(inside)
        with client_of(Console(engine).wsgi) as client:
            assert [str(inside)] == _ids(client.get("/deliveries").text)
            assert 404 == client.get(f"/deliveries/{outside}").status_code
            assert 200 == client.get(f"/deliveries/{inside}").status_code
            assert '<tr data-status="succeeded">' in client.get("/").text
            assert '<tr data-channel="mail">' in client.get("/channels").text
    finally:
        spaced.drop_all()


def _ok(_delivery: object, _key: str) -> object:
    return Sent()
