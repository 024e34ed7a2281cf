"""The delivery list's filter form and its next page, in Chromium, checked against the ledger.

Each filter is typed or chosen in the form and submitted as an operator
would; the rows shown must all match it in the database, and there must be
as many as match, up to a page.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Final

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import Engine, text

from tests.web.browser.conftest import Watched
from tests.web.browser.ledger import Seeded, recipient

# A PostgreSQL ledger of its own (tests/web/browser/conftest.py) and Chromium.
pytestmark = pytest.mark.postgres

PAGE: Final = 50


def _shown(page: Page) -> list[str]:
    rows = page.locator("tr[data-delivery-id]")
    return [rows.nth(i).get_attribute("data-delivery-id") or "" for i in range(rows.count())]


def _where(filters: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """The SQL condition the console's filters mean, with its parameters."""
    clauses, parameters = [], {}
    for name, value in filters.items():
        if name == "since":
            clauses.append("created_at >= :since")
            parameters[name] = datetime.fromisoformat(value)
        elif name == "until":
            clauses.append("created_at < :until")
            parameters[name] = datetime.fromisoformat(value)
        else:
            clauses.append(f"{name} = :{name}")
            parameters[name] = value
    return " AND ".join(clauses) or "true", parameters


def _submit(page: Page, filters: dict[str, str]) -> None:
    form = page.locator('form[data-testid="filters"]')
    for name, value in filters.items():
        field = form.locator(f'[name="{name}"]')
        if field.evaluate("element => element.tagName") == "SELECT":
            field.select_option(value)
        else:
            field.fill(value)
    with page.expect_navigation():
        form.locator('button[type="submit"]').click()


def _window() -> dict[str, str]:
    now = datetime.now(UTC).replace(microsecond=0)
    since, until = now - timedelta(minutes=40), now - timedelta(minutes=25)
    return {"since": since.isoformat(), "until": until.isoformat()}


CASES: Final = {
    "status": {"status": "failed"},
    "reason": {"reason": "bounced"},
    "channel": {"channel": "sms"},
    "recipient": {"recipient": recipient("greylisted")},
    "notification_key": {"notification_key": "lost"},
    "idempotency_key": {"idempotency_key": "flaky-template"},
    "time range": _window(),
    "status and channel": {"status": "cancelled", "channel": "sms"},
    "nothing matches": {"notification_key": "no-such-key"},
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_filter_narrows_the_list_to_what_matches(
    watched: Watched, base_url: str, db: Engine, name: str
) -> None:
    """Every row shown matches in the ledger; as many rows as match, up to a page."""
    page = watched.page
    page.goto(f"{base_url}/deliveries")
    filters = CASES[name]
    _submit(page, filters)
    condition, parameters = _where(filters)
    with db.connect() as conn:
        matching = conn.execute(
            text(f"SELECT count(*) FROM chimeway_deliveries WHERE {condition}"), parameters
        ).scalar_one()
        shown = _shown(page)
        matched = conn.execute(
            text(f"SELECT count(*) FROM chimeway_deliveries WHERE id = ANY(:ids) AND {condition}"),
            {**parameters, "ids": shown},
        ).scalar_one()
    assert matched == len(shown), f"{len(shown) - matched} rows shown do not match {filters}"
    assert len(shown) == min(matching, PAGE), (len(shown), matching)
    if matching == 0:
        expect(page.locator('[data-testid="result-empty"]')).to_be_visible()
    # The form says what is applied.
    for field, value in filters.items():
        expect(page.locator(f'form[data-testid="filters"] [name="{field}"]')).to_have_value(value)


def test_the_next_page_continues_where_the_first_ended(
    watched: Watched, base_url: str, db: Engine, seeded: Seeded
) -> None:
    """Pages one and two are the ledger's first 100 succeeded deliveries, newest first."""
    page = watched.page
    page.goto(f"{base_url}/deliveries")
    _submit(page, {"status": "succeeded"})
    first = _shown(page)
    with page.expect_navigation():
        page.click('a[data-testid="next-page"]')
    second = _shown(page)
    with db.connect() as conn:
        expected = conn.execute(
            text(
                "SELECT id::text FROM chimeway_deliveries WHERE status = 'succeeded' "
                "ORDER BY created_at DESC, id DESC LIMIT :n"
            ),
            {"n": 2 * PAGE},
        ).scalars()
        assert first + second == list(expected)
    expect(page.locator('form[data-testid="filters"] [name="status"]')).to_have_value("succeeded")
    assert seeded.total > 2 * PAGE
