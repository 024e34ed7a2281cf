"""Every page in Chromium: reached through the console's own links, laid out at 1280 and 390 px.

On each page: its landmarks are there, the document is no wider than the
window (``scrollWidth <= clientWidth``: no horizontal scrolling of the page;
wide tables scroll inside their own box), no console error or uncaught
exception, and neither the payload canary, the recipient canary, nor the
password of a URL anywhere in the HTML — the server's as sent and the DOM
after scripts ran.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final
from urllib.parse import quote

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from chimeway_core.states import DeliveryStatus
from tests.web.browser.conftest import NARROW, WIDE, Watched, assert_no_canary, screenshot
from tests.web.browser.ledger import Seeded

# A PostgreSQL ledger of its own (tests/web/browser/conftest.py) and Chromium.
pytestmark = pytest.mark.postgres


def visit(page: Page, url: str) -> str:
    """Open ``url``; check the served HTML for canaries; return it."""
    response = page.goto(url)
    assert response is not None
    assert response.ok, (url, response.status)
    served = response.text()
    assert_no_canary(served, url)
    assert_no_canary(page.content(), f"{url} (DOM)")
    return served


def assert_fits(page: Page, where: str) -> None:
    """The document does not scroll sideways, and __pwned was never set."""
    widths = page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert widths[0] <= widths[1], f"{where} overflows: scrollWidth {widths[0]} > {widths[1]}"
    assert page.evaluate("() => window.__pwned") is None, f"{where} ran injected script"


#: Each page: a name (its screenshot's), how to reach it from the base URL and
#: what must be on it once there.
Reach = Callable[[Page, str, Seeded], None]


def _overview(page: Page, base: str, seeded: Seeded) -> None:
    visit(page, base + "/")
    rows = page.locator('[data-testid="status-counts"] tr[data-status]')
    expect(rows.first).to_be_visible()
    statuses = {rows.nth(i).get_attribute("data-status") for i in range(rows.count())}
    assert statuses == {status.value for status in DeliveryStatus}
    counts = page.locator('[data-testid="status-counts"] tr[data-status] td.num').all_inner_texts()
    assert sum(int(count) for count in counts) >= seeded.total
    for landmark in ("backlog", "channel-live", "chart-attempts"):
        expect(page.locator(f'[data-testid="{landmark}"]')).to_be_visible()
    expect(page.locator('[data-testid="chart-attempts"]')).to_have_js_property("tagName", "svg")


def _deliveries(page: Page, base: str, seeded: Seeded) -> None:
    _overview(page, base, seeded)
    page.click('a[data-nav="deliveries"]')
    expect(page.locator("tr[data-delivery-id]")).to_have_count(50)
    expect(page.locator('a[data-testid="next-page"]')).to_be_visible()
    assert_no_canary(page.content(), "deliveries via the nav")
    # The page as the docs show it: the ended deliveries, each with its reason.
    page.select_option('form[data-testid="filters"] [name="status"]', "cancelled")
    with page.expect_navigation():
        page.click('form[data-testid="filters"] button[type="submit"]')
    expect(page.locator("tr[data-delivery-id]")).to_have_count(50)
    assert_no_canary(page.content(), "deliveries filtered by status")
    for viewport in (NARROW, WIDE):
        page.set_viewport_size(viewport)
        assert_fits(page, f"50 deliveries at {viewport['width']} px")
    # A short page for the picture (a long one makes a heavy PNG).
    visit(page, f"{base}/deliveries?status=cancelled&limit=8")


def _detail(page: Page, base: str, seeded: Seeded) -> None:
    visit(page, f"{base}/deliveries?notification_key=greylisted")
    page.click(f'tr[data-delivery-id="{seeded.templates["greylisted"]}"] a')
    expect(page.locator('[data-testid="delivery-summary"]')).to_contain_text("failed")
    expect(page.locator('[data-testid="attempts"] tbody tr')).to_have_count(1)
    expect(page.locator('[data-testid="journal"] tbody tr')).not_to_have_count(0)
    expect(page.locator('[data-testid="explain"]')).not_to_be_empty()
    expect(page.locator('[data-testid="payload"]')).to_contain_text("hidden")
    assert_no_canary(page.content(), "detail via the list")


def _channels(page: Page, base: str, seeded: Seeded) -> None:
    _overview(page, base, seeded)
    page.click('a[data-nav="channels"]')
    for channel in ("email", "sms"):
        expect(page.locator(f'tr[data-channel="{channel}"]')).to_be_visible()
    expect(page.locator('[data-testid="channel-errors"]')).to_contain_text("greylisted")
    assert_no_canary(page.content(), "channels via the nav")


def _bulk_resend(page: Page, base: str, _seeded: Seeded) -> None:
    visit(page, f"{base}/deliveries?status=suppressed&reason=expired")
    page.click('a[data-action="bulk-resend"]')
    expect(page.locator('[data-testid="dry-run-count"]')).to_be_visible()
    expect(page.locator('form[data-testid="confirm"]')).to_be_visible()


def _cancel(page: Page, base: str, seeded: Seeded) -> None:
    visit(page, f"{base}/deliveries/{seeded.templates['greylisted']}")
    page.click('a[data-action="cancel"]')
    expect(page.locator('button[data-testid="confirm-button"]')).to_be_visible()


def _rescue(page: Page, base: str, seeded: Seeded) -> None:
    _overview(page, base, seeded)
    page.click('a[data-action="rescue"]')
    expect(page.locator('button[data-testid="confirm-button"]')).to_be_visible()


def _not_found(page: Page, base: str, _seeded: Seeded) -> None:
    response = page.goto(f"{base}/deliveries/00000000-0000-0000-0000-000000000000")
    assert response is not None
    assert response.status == 404
    assert_no_canary(response.text(), "404")
    expect(page.locator('[data-testid="error"]')).to_be_visible()


def _bad_filter(page: Page, base: str, _seeded: Seeded) -> None:
    response = page.goto(f"{base}/deliveries?since={quote('yesterday')}")
    assert response is not None
    assert response.status == 400
    expect(page.locator('[data-testid="error"]')).to_contain_text("since")


PAGES: Final[dict[str, Reach]] = {
    "overview": _overview,
    "deliveries": _deliveries,
    "detail": _detail,
    "channels": _channels,
    "bulk-resend": _bulk_resend,
    "cancel": _cancel,
    "rescue": _rescue,
    "not-found": _not_found,
    "bad-filter": _bad_filter,
}


#: The pages docs/console.md shows.
SHOWN_IN_DOCS: Final = ("overview", "deliveries", "detail", "channels", "bulk-resend")


@pytest.mark.parametrize("name", list(PAGES))
def test_every_page_fits_and_leaks_nothing(
    context: BrowserContext, watched: Watched, base_url: str, seeded: Seeded, name: str
) -> None:
    """Reached through the links, at 1280 px then 390 px: fits, no error, no canary."""
    page = watched.page
    PAGES[name](page, base_url, seeded)
    assert_fits(page, f"{name} at 1280 px")
    if name in SHOWN_IN_DOCS:
        screenshot(page, name)
    page.set_viewport_size(NARROW)
    assert_fits(page, f"{name} at 390 px")
    page.set_viewport_size(WIDE)


def test_the_overview_fragment_is_as_clean_as_the_page(watched: Watched, base_url: str) -> None:
    """What the overview's script polls carries the refreshed regions and no canary."""
    response = watched.page.request.get(f"{base_url}/?fragment=overview")
    assert response.ok
    html = response.text()
    assert_no_canary(html, "the overview fragment")
    assert 'data-refresh="' in html


def test_the_overview_refreshes_without_a_reload(watched: Watched, base_url: str) -> None:
    """The script swaps the regions in place: the page is not reloaded, the numbers stay."""
    page = watched.page
    visit(page, base_url + "/")
    # Marks on the window and on a region: a reload loses the first, a swap the second.
    page.evaluate(
        "() => { window.__loadedOnce = true;"
        " document.querySelector('[data-refresh=\"status-counts\"]').dataset.old = '1'; }"
    )
    page.wait_for_function(
        "() => !document.querySelector('[data-refresh=\"status-counts\"]').dataset.old",
        timeout=60_000,
    )
    assert page.evaluate("() => window.__loadedOnce") is True
    expect(page.locator('[data-testid="status-counts"] tr[data-status]').first).to_be_visible()
