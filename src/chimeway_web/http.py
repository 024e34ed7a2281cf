"""The console's HTTP values, framework-neutral: :class:`Request`, :class:`Response`, a router.

Theory of operation
-------------------
The WSGI and ASGI adapters (:mod:`chimeway_web.adapters`) turn what their
server hands them into a :class:`Request` (the path already relative to the
mount prefix, the prefix in :attr:`Request.root`) and a :class:`Response`
back into what their server sends. Everything between is plain values and
functions, the same under both.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from http.cookies import SimpleCookie
from typing import Any, Final
from urllib.parse import parse_qsl, quote, urlencode

import attrs

from chimeway_core.errors import ChimewayError

__all__ = [
    "HTTPError",
    "Handler",
    "Request",
    "Response",
    "Router",
    "parse_cookies",
    "parse_query",
]

#: The most bytes of a form body the console reads; a larger one is refused.
MAX_BODY: Final = 64 * 1024


def parse_query(text: str) -> dict[str, str]:
    """A query string or form body as a dict (a name given twice keeps its last value)."""
    return dict(parse_qsl(text, keep_blank_values=True))


def parse_cookies(header: str) -> dict[str, str]:
    """The cookies of a ``Cookie`` header; a malformed one is ignored."""
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except Exception:
        return {}
    return {name: morsel.value for name, morsel in jar.items()}


@attrs.frozen(kw_only=True)
class Request:
    """One request, as the console sees it.

    ``path`` is relative to the mount prefix ``root`` (``""`` at the top),
    ``query`` and ``form`` are decoded, ``headers`` have lowercase names.
    ``environ`` (WSGI) or ``scope`` (ASGI) is the host server's own, for an
    ``authorize`` hook that asks the host application about the user.
    """

    method: str
    path: str
    root: str = ""
    query: Mapping[str, str] = attrs.field(factory=dict)
    headers: Mapping[str, str] = attrs.field(factory=dict)
    cookies: Mapping[str, str] = attrs.field(factory=dict)
    form: Mapping[str, str] = attrs.field(factory=dict)
    environ: Mapping[str, Any] | None = None
    scope: Mapping[str, Any] | None = None

    def url(self, path: str, query: Mapping[str, str | None] | None = None) -> str:
        """A link to ``path`` under the mount prefix, with ``query`` (empty values left out)."""
        target = self.root + path
        given = {name: value for name, value in (query or {}).items() if value}
        return f"{target}?{urlencode(given)}" if given else target


@attrs.frozen(kw_only=True)
class Response:
    """What the console answers: status, headers (``Set-Cookie`` may repeat) and body."""

    status: int = 200
    body: bytes = b""
    headers: Sequence[tuple[str, str]] = ()

    @property
    def status_line(self) -> str:
        """``200 OK`` and the like, as WSGI wants it."""
        try:
            return f"{self.status} {HTTPStatus(self.status).phrase}"
        except ValueError:
            return f"{self.status} Unknown"


class HTTPError(ChimewayError):
    """A request the console refuses: answered with ``status`` and ``message``, never a 500."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"{status}: {message}")


#: A handler: the request and the path's captured parts in, the response out.
Handler = Callable[..., Response]

_PARAM: Final = re.compile(r"<([a-z_]+)>")


class Router:
    """Paths (``/deliveries/<id>/cancel``) to handlers, per method.

    A captured part matches one path segment and is passed by name. A path
    no route matches is a 404; a known path with another method a 405.
    """

    def __init__(self) -> None:
        self._routes: list[tuple[re.Pattern[str], dict[str, Handler]]] = []

    def add(self, path: str, handlers: Mapping[str, Handler]) -> None:
        """Route ``path`` to ``handlers`` by method (``GET``, ``POST``)."""
        pattern = "^" + _PARAM.sub(r"(?P<\1>[^/]+)", re.escape(path)) + "$"
        self._routes.append((re.compile(pattern), dict(handlers)))

    def resolve(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        """The handler of ``method`` on ``path`` and its captured parts, else :class:`HTTPError`."""
        for pattern, handlers in self._routes:
            found = pattern.match(path)
            if found is None:
                continue
            handler = handlers.get("GET" if method == "HEAD" else method)
            if handler is None:
                raise HTTPError(405, f"{method} is not allowed on {quote(path)}")
            return handler, found.groupdict()
        raise HTTPError(404, "no such page")
