"""Hostile ledger text renders inert in Chromium, and every page reads without JavaScript.

The ``<script>`` recipient is shown by a console whose mask shows
recipients whole, so the escaping itself is what is tested, not the mask:
its text is on the page, as text, and the script never ran. The attempts'
error carries an ``<img onerror>``, the provider response a ``<script>``
and control characters: all shown as text, the control characters as
visible escapes, no element made of them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import Browser, expect

from chimeway_core import Chimeway
from tests.web.browser.conftest import WIDE, Watched
from tests.web.browser.ledger import HOSTILE_RECIPIENT, HTML_ERROR, Seeded

# A PostgreSQL ledger of its own (tests/web/browser/conftest.py) and Chromium.
pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def unmasked_url(serve: Callable[[Any], str], engine: Chimeway) -> str:
    """A console that shows recipients whole (its operator's choice)."""
    from chimeway_web import Console

    return serve(Console(engine, mask_recipient=lambda recipient: recipient).wsgi)


def test_a_script_recipient_is_text(watched: Watched, unmasked_url: str, seeded: Seeded) -> None:
    """On the list and the detail page: the address as text, no script ran, no element made."""
    page = watched.page
    for path in ("/deliveries?notification_key=hostile", f"/deliveries/{seeded.hostile}"):
        page.goto(unmasked_url + path)
        expect(page.locator("main, body").first).to_contain_text(HOSTILE_RECIPIENT)
        assert page.evaluate("() => window.__pwned") is None
        inline = page.evaluate(
            "() => [...document.scripts].filter(s => s.textContent.includes('__pwned')).length"
        )
        assert inline == 0, f"{path}: the recipient became a script element"
    # The idempotency key's control character is shown as an escape, not sent raw.
    expect(page.locator('[data-testid="delivery-summary"]')).to_contain_text("\\x07")
    assert "\x07" not in page.content()


def test_html_in_errors_and_responses_is_text(
    watched: Watched, base_url: str, seeded: Seeded
) -> None:
    """The error's <img> and the response's <script> are characters on the page, not elements."""
    page = watched.page
    page.goto(f"{base_url}/deliveries/{seeded.templates['greylisted']}")
    attempts = page.locator('[data-testid="attempts"]')
    expect(attempts).to_contain_text(HTML_ERROR)
    expect(attempts).to_contain_text("<script>window.__pwned=1</script>")
    # JSON's escape or the console's: visible either way, never the raw character.
    expect(attempts).to_contain_text(re.compile(r"bell\\(x07|u0007)"))
    assert "\x07" not in page.content()
    expect(attempts.locator("img, script, b, i")).to_have_count(0)
    assert page.evaluate("() => window.__pwned") is None
    page.goto(f"{base_url}/channels")
    expect(page.locator('[data-testid="channel-errors"]')).to_contain_text(HTML_ERROR)
    expect(page.locator('[data-testid="channel-errors"] img')).to_have_count(0)
    assert page.evaluate("() => window.__pwned") is None


def test_every_page_reads_without_javascript(
    browser: Browser, base_url: str, seeded: Seeded
) -> None:
    """With scripts off, each page's content is all there, served whole."""
    context = browser.new_context(viewport=WIDE, java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto(base_url + "/")
        expect(page.locator('[data-testid="status-counts"] tr[data-status]').first).to_be_visible()
        expect(page.locator('[data-testid="chart-attempts"]')).to_be_visible()
        page.click('a[data-nav="deliveries"]')
        expect(page.locator("tr[data-delivery-id]")).to_have_count(50)
        page.click('a[data-testid="next-page"]')
        expect(page.locator("tr[data-delivery-id]")).to_have_count(50)
        page.goto(f"{base_url}/deliveries?notification_key=flaky")
        page.locator("tr[data-delivery-id] a").first.click()
        expect(page.locator('[data-testid="attempts"] tr[data-attempt]')).to_have_count(2)
        expect(page.locator('[data-testid="explain"]')).to_contain_text("retries_exhausted")
        page.click('a[data-nav="channels"]')
        expect(page.locator('tr[data-channel="email"]')).to_be_visible()
    finally:
        context.close()
