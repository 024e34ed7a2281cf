"""A real Chromium against the console serving a seeded PostgreSQL ledger.

The browser is Debian's ``chromium`` (``/usr/bin/chromium``, or the path in
``CHIMEWAY_CHROMIUM``), driven by Playwright over its own protocol: no
browser is ever downloaded. The nox ``tests`` session installs the package
when it is missing. Without it the browser tests are skipped with the
reason — unless ``CHIMEWAY_REQUIRE_SERVICES=1`` (CI), where they fail, as a
missing service does (tests/services.py).

One ledger serves every test of this folder (:mod:`tests.web.browser.ledger`): a
fresh database, seeded once, served by ``Console(engine).wsgi`` on a
threading ``wsgiref`` server on a free loopback port. Tests that act change
it; every test reads what it expects from the ledger at the time it checks.

``CHIMEWAY_SCREENSHOTS=docs/console`` makes the page tests write a viewport
screenshot of each page at 1280 px there (the docs' pictures); unset, none
is written, so a CI run leaves the tree clean.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any, Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from sqlalchemy import Engine, text

from chimeway_backends.memory import MemoryBackend
from chimeway_core import Chimeway, DeliveryGuarantee
from chimeway_core.store import SQLStore
from chimeway_core.testing import FakeChannel
from tests.services import fresh_postgres_database, services_required
from tests.web.browser.ledger import (
    PAYLOAD_CANARY,
    RECIPIENT_CANARY,
    SECRET_CANARY,
    Seeded,
    seed,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

CHROMIUM: Final = Path(os.environ.get("CHIMEWAY_CHROMIUM", "/usr/bin/chromium"))
WIDE: Final = {"width": 1280, "height": 800}
NARROW: Final = {"width": 390, "height": 844}
SCREENSHOTS: Final = os.environ.get("CHIMEWAY_SCREENSHOTS", "")


def require_browser() -> None:
    """Skip (or, under CHIMEWAY_REQUIRE_SERVICES=1, fail) without Chromium."""
    if CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK):
        return
    message = (
        f"Chromium is not installed at {CHROMIUM} "
        "(apt-get install chromium; the nox tests session does it)"
    )
    if services_required():
        pytest.fail(f"{message} and CHIMEWAY_REQUIRE_SERVICES=1", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, for this folder's tests.

    Not for the whole session: Playwright's sync API keeps an event loop
    running in this thread while it is open, and a later test's
    ``asyncio.run()`` would then refuse to start.
    """
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="package")
def ledger() -> Iterator[tuple[SQLStore, Seeded]]:
    """A fresh PostgreSQL database seeded with about 3,000 deliveries."""
    with fresh_postgres_database("chimeway_console") as url:
        store = SQLStore(url)
        store.create_all()
        # The templates are dated from 50 minutes ago: the overview's last
        # hour has attempts, and every lease the crash left has expired.
        seeded = seed(store, start=datetime.now(UTC) - timedelta(minutes=50))
        yield store, seeded
        store.engine.dispose()


@pytest.fixture(scope="package")
def store(ledger: tuple[SQLStore, Seeded]) -> SQLStore:
    """The seeded ledger's store."""
    return ledger[0]


@pytest.fixture(scope="package")
def seeded(ledger: tuple[SQLStore, Seeded]) -> Seeded:
    """What the seed made."""
    return ledger[1]


@pytest.fixture(scope="package")
def db(store: SQLStore) -> Engine:
    """The ledger's SQLAlchemy engine, to check what the pages show."""
    return store.engine


def scalar(db: Engine, statement: str, **parameters: Any) -> Any:
    """One value a SQL statement returns."""
    with db.connect() as conn:
        return conn.execute(text(statement), parameters).scalar_one()


@pytest.fixture(scope="package")
def engine(store: SQLStore) -> Chimeway:
    """The engine the console serves: the seed's channels, on the wall clock."""
    return Chimeway(
        store,
        MemoryBackend(),
        {
            "email": FakeChannel(),
            "sms": FakeChannel(guarantee=DeliveryGuarantee.AT_MOST_ONCE),
        },
    )


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Say nothing: pytest shows failures, not every request."""


@pytest.fixture(scope="package")
def serve() -> Iterator[Callable[[Any], str]]:
    """Serve WSGI apps on free loopback ports; ``serve(app)`` is the base URL."""
    servers: list[WSGIServer] = []

    def start(app: Any) -> str:
        server = make_server("127.0.0.1", 0, app, server_class=_Server, handler_class=_QuietHandler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="package")
def base_url(serve: Callable[[Any], str], engine: Chimeway) -> str:
    """The console with its defaults (masked recipients, actions on), acting as ``alice``."""
    from chimeway_web import Console

    return serve(Console(engine, actor=lambda _request: "alice").wsgi)


class Watched:
    """A page whose console errors and uncaught exceptions are collected."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        page.on("response", self._response)

    def _response(self, response: Any) -> None:
        # A page's own status is the test's to check (the 404 page is a 404);
        # what it loads (styles, scripts, icons, polls) must all load.
        if response.status >= 400 and response.request.resource_type != "document":
            self.errors.append(f"{response.status} for {response.url}")

    def _console(self, message: Any) -> None:
        if message.type in {"error", "warning"}:
            url = message.location.get("url", "")
            if url == self.page.url and message.text.startswith("Failed to load resource"):
                return  # the page's own status (a 404 page), which the test checks
            self.errors.append(f"console {message.type}: {message.text} ({url})")


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser context (cookies of its own) at 1280 px."""
    made = browser.new_context(viewport=WIDE)
    yield made
    made.close()


@pytest.fixture
def watched(context: BrowserContext) -> Iterator[Watched]:
    """A page in ``context``; the test fails if it logged an error or threw."""
    page = Watched(context.new_page())
    yield page
    assert page.errors == [], page.errors


CANARIES: Final = (PAYLOAD_CANARY, RECIPIENT_CANARY, SECRET_CANARY)


def assert_no_canary(html: str, where: str) -> None:
    """Fail naming the canary that reached the HTML of ``where``."""
    leaked = [canary for canary in CANARIES if canary in html]
    assert leaked == [], f"{where} shows {leaked}"


def screenshot(page: Page, name: str) -> None:
    """Write the top of the viewport to ``$CHIMEWAY_SCREENSHOTS/<name>.png`` when that is set."""
    if not SCREENSHOTS:
        return
    folder = Path(SCREENSHOTS)
    folder.mkdir(parents=True, exist_ok=True)
    # The top of the page at 1280 x 720 keeps each picture near 100 KB.
    clip = {"x": 0, "y": 0, "width": WIDE["width"], "height": 720}
    page.screenshot(path=str(folder / f"{name}.png"), clip=clip)  # type: ignore[arg-type]
