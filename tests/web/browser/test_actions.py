"""Each action through its confirmation page in Chromium, then read back from the ledger.

Every action here is reached from a page's link, confirmed with the
confirmation form's button (which carries the CSRF token the console set),
and must show a flash and have done what it says in the database, with the
actor (``alice``) in the journal. Read-only mode shows no action anywhere
and refuses a POST.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final
from uuid import UUID

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import Engine, text

from chimeway_core import Chimeway
from tests.web.browser.conftest import Watched, assert_no_canary, scalar
from tests.web.browser.ledger import PAYLOAD_CANARY, Seeded

# A PostgreSQL ledger of its own (tests/web/browser/conftest.py) and Chromium.
pytestmark = pytest.mark.postgres

JOURNAL_BY: Final = (
    "SELECT count(*) FROM chimeway_delivery_journal "
    "WHERE delivery_id = :id AND kind = :kind AND CAST(detail AS jsonb) ->> 'by' = 'alice'"
)


def _confirm(page: Page, action: str) -> None:
    """Follow the action's link, then press the confirmation page's button."""
    with page.expect_navigation():
        page.click(f'a[data-action="{action}"]')
    expect(page.locator('form[data-testid="confirm"]')).to_be_visible()
    assert_no_canary(page.content(), f"the {action} confirmation")
    with page.expect_navigation():
        page.click('button[data-testid="confirm-button"]')
    if action != "reveal":  # the reveal's own response is the one that shows the payload
        assert_no_canary(page.content(), f"the page after {action}")


def _status(db: Engine, delivery_id: UUID) -> tuple[str, str | None]:
    with db.connect() as conn:
        row = conn.execute(
            text("SELECT status, reason FROM chimeway_deliveries WHERE id = :id"),
            {"id": delivery_id},
        ).one()
    return row.status, row.reason


def test_cancel_after_confirming(
    watched: Watched, base_url: str, db: Engine, seeded: Seeded
) -> None:
    """A ready delivery is cancelled, by alice, and the detail page says so."""
    page, target = watched.page, seeded.templates["pending"]
    page.goto(f"{base_url}/deliveries/{target}")
    _confirm(page, "cancel")
    expect(page.locator('[data-testid="flash"]')).to_contain_text("Cancelled")
    assert _status(db, target) == ("cancelled", "cancelled")
    assert scalar(db, JOURNAL_BY, id=target, kind="transition") == 1
    expect(page.locator('a[data-action="cancel"]')).to_have_count(0)


def test_resend_one_after_confirming(
    watched: Watched, base_url: str, db: Engine, seeded: Seeded
) -> None:
    """A bounced delivery gets one copy, ready; the original's journal names it."""
    page, target = watched.page, seeded.templates["bounce"]
    page.goto(f"{base_url}/deliveries/{target}")
    _confirm(page, "resend")
    expect(page.locator('[data-testid="flash"]')).to_contain_text("Resent as")
    copy = scalar(
        db,
        "SELECT CAST(detail AS jsonb) ->> 'as' FROM chimeway_delivery_journal "
        "WHERE delivery_id = :id AND kind = 'resent'",
        id=target,
    )
    assert _status(db, UUID(copy)) == ("ready", None)
    assert _status(db, target) == ("cancelled", "bounced")  # the original stays as it was
    assert scalar(db, JOURNAL_BY, id=target, kind="resent") == 1


def test_bulk_resend_shows_its_count_first(watched: Watched, base_url: str, db: Engine) -> None:
    """The dry run counts what the POST then resends: every match, no more."""
    page = watched.page
    where = "status = 'suppressed' AND reason = 'too_many_deferrals'"
    page.goto(f"{base_url}/deliveries?status=suppressed&reason=too_many_deferrals")
    with page.expect_navigation():
        page.click('a[data-action="bulk-resend"]')
    expected = scalar(db, f"SELECT count(*) FROM chimeway_deliveries WHERE {where}")
    count = page.locator('[data-testid="dry-run-count"]')
    expect(count).to_have_text(str(expected))
    assert (
        scalar(
            db,
            "SELECT count(*) FROM chimeway_delivery_journal WHERE kind = 'resent' "
            f"AND delivery_id IN (SELECT id FROM chimeway_deliveries WHERE {where})",
        )
        == 0
    )
    with page.expect_navigation():
        page.click('button[data-testid="confirm-button"]')
    expect(page.locator('[data-testid="flash"]')).to_contain_text(f"Resent {expected} deliveries")
    resent = scalar(
        db,
        "SELECT count(DISTINCT delivery_id) FROM chimeway_delivery_journal WHERE kind = 'resent' "
        f"AND CAST(detail AS jsonb) ->> 'by' = 'alice' "
        f"AND delivery_id IN (SELECT id FROM chimeway_deliveries WHERE {where})",
    )
    assert resent == expected
    # Asked again, nothing is left to resend.
    page.goto(f"{base_url}/resend?status=suppressed&reason=too_many_deferrals")
    expect(page.locator('[data-testid="dry-run-count"]')).to_have_text("0")


def test_reveal_shows_the_payload_once_and_journals_it(
    watched: Watched, base_url: str, db: Engine, seeded: Seeded
) -> None:
    """The reveal's own response shows the payload; the next visit hides it again."""
    page, target = watched.page, seeded.templates["receipt"]
    page.goto(f"{base_url}/deliveries/{target}")
    expect(page.locator('[data-testid="payload"]')).to_contain_text("hidden")
    assert PAYLOAD_CANARY not in page.content()
    _confirm(page, "reveal")
    expect(page.locator('[data-testid="payload"]')).to_contain_text(PAYLOAD_CANARY)
    assert scalar(db, JOURNAL_BY, id=target, kind="revealed") == 1
    page.goto(f"{base_url}/deliveries/{target}")
    expect(page.locator('[data-testid="payload"]')).to_contain_text("hidden")
    assert PAYLOAD_CANARY not in page.content()
    expect(page.locator('[data-testid="journal"] tr[data-kind="revealed"]')).to_have_count(1)


def test_rescue_resolves_the_dead_workers_attempt(
    watched: Watched, base_url: str, db: Engine, seeded: Seeded
) -> None:
    """The crashed attempt, in flight past its lease, is resolved as unknown."""
    page, crashed = watched.page, seeded.templates["crash"]
    in_flight = (
        "SELECT count(*) FROM chimeway_delivery_attempts "
        "WHERE delivery_id = :id AND outcome IS NULL"
    )
    assert scalar(db, in_flight, id=crashed) == 1
    page.goto(f"{base_url}/")
    _confirm(page, "rescue")
    expect(page.locator('[data-testid="flash"]')).to_contain_text("Rescue:")
    assert scalar(db, in_flight, id=crashed) == 0
    outcome = "SELECT outcome FROM chimeway_delivery_attempts WHERE delivery_id = :id"
    assert scalar(db, outcome, id=crashed) == "unknown"


def test_read_only_shows_no_action_and_refuses_a_post(
    watched: Watched, serve: Callable[[Any], str], engine: Chimeway, seeded: Seeded
) -> None:
    """No action link on any page; a POST (even with a token from a page) is a 403."""
    from chimeway_web import Console

    base = serve(Console(engine, read_only=True).wsgi)
    page = watched.page
    live = seeded.templates["greylisted"]
    for path in (
        "/",
        "/deliveries",
        f"/deliveries/{live}",
        f"/deliveries/{seeded.hostile}",
        "/channels",
    ):
        page.goto(base + path)
        expect(page.locator("[data-action]")).to_have_count(0)
        expect(page.locator('form[method="post"]')).to_have_count(0)
    page.goto(f"{base}/deliveries/{live}/cancel")
    expect(page.locator('button[data-testid="confirm-button"]')).to_have_count(0)
    refused = page.request.post(f"{base}/deliveries/{live}/cancel", form={"csrf_token": "x"})
    assert refused.status == 403
    assert page.request.post(f"{base}/rescue", form={}).status == 403
    assert _status(engine.store.engine, live) == ("failed", None)
