"""The console under WSGI and ASGI: each server's request in, a :class:`Response` out.

Theory of operation
-------------------
Both adapters make the same :class:`~chimeway_web.http.Request` and call the
same synchronous handler. The mount prefix is the server's: WSGI's
``SCRIPT_NAME`` (Werkzeug's ``DispatcherMiddleware``, Django's, any WSGI
mount sets it) and ASGI's ``root_path`` (Starlette's ``app.mount``). ASGI
runs the handler with :func:`asyncio.to_thread`, so the ledger's blocking
reads never hold the event loop. ASGI serves HTTP only: a ``lifespan``
scope is acknowledged, anything else refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any, Final

from chimeway_web.http import MAX_BODY, Request, Response, parse_cookies, parse_query

__all__ = ["ASGIApp", "WSGIApp", "asgi_app", "wsgi_app"]

#: A WSGI application.
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
#: An ASGI application.
ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]

_FORM: Final = "application/x-www-form-urlencoded"


def _form(content_type: str, body: bytes) -> dict[str, str]:
    if content_type.split(";", maxsplit=1)[0].strip().lower() != _FORM:
        return {}
    return parse_query(body.decode("utf-8", "replace"))


def _latin1_to_utf8(text: str) -> str:
    # PEP 3333: the path arrives as bytes decoded as latin-1.
    try:
        return text.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return text


def wsgi_app(handle: Callable[[Request], Response]) -> WSGIApp:
    """A WSGI application calling ``handle`` with each request."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        headers = {
            key[5:].replace("_", "-").lower(): value
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        content_type = environ.get("CONTENT_TYPE", "")
        if content_type:
            headers["content-type"] = content_type
        body = b""
        method = environ.get("REQUEST_METHOD", "GET").upper()
        if method == "POST":
            try:
                length = min(int(environ.get("CONTENT_LENGTH") or 0), MAX_BODY)
            except ValueError:
                length = 0
            body = environ["wsgi.input"].read(length) if length > 0 else b""
        request = Request(
            method=method,
            path=_latin1_to_utf8(environ.get("PATH_INFO", "")) or "/",
            root=_latin1_to_utf8(environ.get("SCRIPT_NAME", "")).rstrip("/"),
            query=parse_query(environ.get("QUERY_STRING", "")),
            headers=headers,
            cookies=parse_cookies(environ.get("HTTP_COOKIE", "")),
            form=_form(content_type, body),
            environ=environ,
        )
        response = handle(request)
        start_response(response.status_line, list(response.headers))
        return [b"" if method == "HEAD" else response.body]

    return app


def asgi_app(handle: Callable[[Request], Response]) -> ASGIApp:
    """An ASGI (3.0) application calling ``handle`` in a thread with each HTTP request."""

    async def app(
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            raise ValueError(f"the console serves HTTP only, not {scope['type']!r}")
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False) and len(body) <= MAX_BODY
        request = _asgi_request(scope, body[:MAX_BODY])
        response = await asyncio.to_thread(handle, request)
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [(k.lower().encode(), v.encode()) for k, v in response.headers],
            }
        )
        await send(
            {
                "type": "http.response.body",
                "body": b"" if request.method == "HEAD" else response.body,
            }
        )

    return app


def _asgi_request(scope: Mapping[str, Any], body: bytes) -> Request:
    headers: dict[str, str] = {}
    for key, value in scope.get("headers", []):
        name = key.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers[name] = f"{headers[name]}; {text}" if name == "cookie" and name in headers else text
    root = str(scope.get("root_path", "")).rstrip("/")
    path = str(scope.get("path", "/"))
    # Starlette's mount keeps the full path and sets root_path: strip it here.
    if root and path.startswith(root):
        path = path[len(root) :]
    return Request(
        method=str(scope.get("method", "GET")).upper(),
        path=path or "/",
        root=root,
        query=parse_query(bytes(scope.get("query_string", b"")).decode("latin-1")),
        headers=headers,
        cookies=parse_cookies(headers.get("cookie", "")),
        form=_form(headers.get("content-type", ""), body),
        scope=scope,
    )
