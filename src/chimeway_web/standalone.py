"""``chimeway web``'s server: the console alone, on the standard library's WSGI server.

Theory of operation
-------------------
The console trusts whoever reaches it (a host application's authentication
stands in front of a mounted one). Served alone there is no host, so:

- it listens on loopback unless told otherwise, and :func:`check_bind`
  refuses any other address without a token;
- with a token, :func:`token_gate` lets a request through only with the
  token's cookie. ``/?token=T`` once sets that cookie (HttpOnly,
  SameSite=Strict) and redirects to the same page without the token, so it
  leaves the address bar and the history; anything else is a 401. Tokens
  are compared in constant time.

:func:`serve` runs a threading ``wsgiref`` server: no dependency beyond
the console's own.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
import socketserver
from collections.abc import Callable, Iterable
from typing import Any, Final
from urllib.parse import urlencode
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from chimeway_web.adapters import WSGIApp
from chimeway_web.http import parse_cookies, parse_query

__all__ = ["TOKEN_COOKIE", "Server", "check_bind", "is_loopback", "serve", "token_gate"]

TOKEN_COOKIE: Final = "chimeway_token"  # noqa: S105 -- a cookie's name
_UNAUTHORIZED: Final = (
    b"401 Unauthorized: open the console's address with ?token=<the token> once.\n"
)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> str | None:
    """Why serving on ``host`` with ``token`` is refused, or ``None`` when it is fine."""
    if token is not None and not token.strip():
        return "the token is empty"
    if token is None and not is_loopback(host):
        return (
            f"listening on {host} would serve the console to the network without a token: "
            "pass --token (or set CHIMEWAY_WEB_TOKEN), or listen on 127.0.0.1"
        )
    return None


def token_gate(app: WSGIApp, token: str) -> WSGIApp:
    """``app`` behind ``token``: its cookie passes, ``?token=`` sets the cookie, else 401."""
    expected = token.encode()

    def matches(given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), expected)

    def gated(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        query = parse_query(environ.get("QUERY_STRING", ""))
        if matches(query.get("token")):
            rest = {name: value for name, value in query.items() if name != "token"}
            root = environ.get("SCRIPT_NAME", "")
            location = root + (environ.get("PATH_INFO") or "/")
            if rest:
                location += "?" + urlencode(rest)
            cookie = f"{TOKEN_COOKIE}={token}; Path={root or '/'}; HttpOnly; SameSite=Strict"
            start_response(
                "303 See Other",
                [("Location", location), ("Set-Cookie", cookie), ("Cache-Control", "no-store")],
            )
            return [b""]
        if matches(parse_cookies(environ.get("HTTP_COOKIE", "")).get(TOKEN_COOKIE)):
            return app(environ, start_response)
        start_response("401 Unauthorized", [("Content-Type", "text/plain; charset=utf-8")])
        return [_UNAUTHORIZED]

    return gated


class _Quiet(WSGIRequestHandler):
    """wsgiref's handler, without a line on stderr per request."""

    def log_message(self, format: str, *args: Any) -> None:
        """Say nothing: the command prints where it serves, once."""


class Server(socketserver.ThreadingMixIn, WSGIServer):
    """wsgiref's server, one thread per request (the console's reads block)."""

    daemon_threads = True


class _Server6(Server):
    address_family = socket.AF_INET6


def serve(app: WSGIApp, host: str, port: int) -> Server:
    """A server for ``app`` bound to ``host``:``port`` (0: a free port), not yet serving.

    Call ``serve_forever()`` on it (in a thread, with ``shutdown()`` to stop);
    ``server_address[1]`` is the port it got.
    """
    server_class = _Server6 if ":" in host else Server
    server: Server = make_server(host, port, app, server_class=server_class, handler_class=_Quiet)
    return server
