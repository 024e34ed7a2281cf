"""The console mounted in Flask, FastAPI/Starlette and Django: links carry the prefix.

Each host mounts it as its documentation says, and its ``authorize`` hook
reads something only the host put in the request.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

import httpx
import pytest

from chimeway_core.engine import Chimeway
from chimeway_core.states import DeliveryStatus
from chimeway_web import Console, Request
from tests.web.conftest import csrf_of

pytestmark = pytest.mark.extras

PREFIX = "/ops/console"


def _links(page: str) -> list[str]:
    return re.findall(r'(?:href|src|action)="(/[^"]*)"', page)


def _check_prefixed(client: httpx.Client, seeded: dict[str, UUID], engine: Chimeway) -> None:
    """Every page's every link under the prefix; an action works end to end there."""
    for path in ("/", "/deliveries", f"/deliveries/{seeded['ready']}", "/channels"):
        response = client.get(PREFIX + path)
        assert 200 == response.status_code, path
        links = _links(response.text)
        assert links
        assert all(link.startswith(PREFIX + "/") for link in links), links
    cancel = f"{PREFIX}/deliveries/{seeded['ready']}/cancel"
    page = client.get(cancel).text
    answer = client.post(cancel, data={"csrf_token": csrf_of(page)})
    assert 303 == answer.status_code
    assert answer.headers["location"].endswith(f"{PREFIX}/deliveries/{seeded['ready']}")
    assert DeliveryStatus.CANCELLED is engine.get(seeded["ready"]).delivery.status


def test_flask_with_werkzeug_dispatcher(engine: Chimeway, seeded: dict[str, UUID]) -> None:
    """DispatcherMiddleware sets SCRIPT_NAME; authorize reads what a host middleware set."""
    from flask import Flask
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    def authorize(request: Request) -> bool:
        return bool(request.environ and request.environ.get("host.user") == "ops")

    console = Console(engine, authorize=authorize)
    app = Flask(__name__)
    dispatched = DispatcherMiddleware(app.wsgi_app, {PREFIX: console.wsgi})

    def host(environ: dict[str, Any], start_response: Any) -> Any:
        environ["host.user"] = "ops" if environ.get("HTTP_X_USER") == "ops" else None
        return dispatched(environ, start_response)

    transport = httpx.WSGITransport(app=host)
    with httpx.Client(transport=transport, base_url="http://host") as anonymous:
        assert 403 == anonymous.get(PREFIX + "/").status_code
    with httpx.Client(transport=transport, base_url="http://host", headers={"x-user": "ops"}) as c:
        _check_prefixed(c, seeded, engine)


class ASGIClient:
    """A blocking client on an ASGI app (httpx's ASGI transport, one event loop per call)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.cookies = httpx.Cookies()

    def request(self, method: str, url: str, **options: Any) -> httpx.Response:
        """Send one request; keep the cookies it sets."""

        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://host", cookies=self.cookies
            ) as client:
                response = await client.request(method, url, **options)
                self.cookies.update(client.cookies)
                return response

        return asyncio.run(send())

    def get(self, url: str, **options: Any) -> httpx.Response:
        """GET ``url``."""
        return self.request("GET", url, **options)

    def post(self, url: str, **options: Any) -> httpx.Response:
        """POST to ``url``."""
        return self.request("POST", url, **options)


def test_fastapi_mount_runs_under_asgi(engine: Chimeway, seeded: dict[str, UUID]) -> None:
    """app.mount(prefix, console.asgi): root_path prefixes every link; authorize sees the app."""
    from fastapi import FastAPI

    apps: list[Any] = []
    app = FastAPI()

    def authorize(request: Request) -> bool:
        assert request.scope is not None
        apps.append(request.scope.get("app"))
        return True

    app.mount(PREFIX, Console(engine, authorize=authorize).asgi)
    _check_prefixed(ASGIClient(app), seeded, engine)  # type: ignore[arg-type]
    assert apps
    assert all(seen is app for seen in apps)


def test_django_catch_all_view(engine: Chimeway, seeded: dict[str, UUID]) -> None:
    """console_view under a re_path: the prefix is where the pattern matched."""
    from django.conf import settings

    if not settings.configured:
        settings.configure(DEBUG=False, ALLOWED_HOSTS=["*"], DATABASES={})
    import django

    django.setup()
    from django.test import RequestFactory

    from chimeway_web.django import DJANGO_REQUEST, console_view

    def authorize(request: Request) -> bool:
        assert request.environ is not None
        return request.environ[DJANGO_REQUEST].headers.get("X-User") == "ops"

    view = console_view(Console(engine, authorize=authorize))
    factory = RequestFactory(headers={"X-User": "ops"})
    for path in ("/", "/deliveries", f"/deliveries/{seeded['ready']}", "/channels"):
        response = view(factory.get(PREFIX + path), path=path)
        assert 200 == response.status_code
        links = _links(response.content.decode())
        assert all(link.startswith(PREFIX + "/") for link in links), links
    assert 403 == view(RequestFactory().get(PREFIX + "/"), path="/").status_code
    cancel = f"/deliveries/{seeded['ready']}/cancel"
    page = view(factory.get(PREFIX + cancel), path=cancel)
    token = page.cookies["chimeway_csrf"].value
    form = urlencode({"csrf_token": csrf_of(page.content.decode())})
    post = factory.post(PREFIX + cancel, form, content_type="application/x-www-form-urlencoded")
    post.COOKIES["chimeway_csrf"] = token
    post.META["HTTP_COOKIE"] = f"chimeway_csrf={token}"
    answer = view(post, path=cancel)
    assert (303, f"{PREFIX}/deliveries/{seeded['ready']}") == (
        answer.status_code,
        answer["Location"],
    )
    assert DeliveryStatus.CANCELLED is engine.get(seeded["ready"]).delivery.status
