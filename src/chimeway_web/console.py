"""The console: :class:`Console`, one object serving every page under WSGI and ASGI.

Theory of operation
-------------------
:meth:`Console.handle` is the one entry: it asks ``authorize`` (403 when it
says no), resolves the route, refuses a POST in read-only mode or without
the CSRF token its cookie holds (403 either), and renders the page or the
error. Each request gets a :class:`Context`: the request, its CSRF token,
the flash message the last action left, and the cookies to set. Pages
(:mod:`chimeway_web.pages`) only read; actions (:mod:`chimeway_web.actions`)
act through the engine's own functions and answer with a 303 and a flash.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib.resources import files
from typing import Any, Final

import attrs
import jinja2

from chimeway_core.engine import Chimeway
from chimeway_core.errors import ChimewayError
from chimeway_core.store import SQLStore
from chimeway_web import actions, pages
from chimeway_web.adapters import asgi_app, wsgi_app
from chimeway_web.http import Handler, HTTPError, Request, Response, Router
from chimeway_web.safety import Signer, mask_emails, mask_recipient, shown

__all__ = ["Console", "Context"]

logger = logging.getLogger(__name__)

CSRF_COOKIE: Final = "chimeway_csrf"
FLASH_COOKIE: Final = "chimeway_flash"
CSRF_FIELD: Final = "csrf_token"
_SECURITY_HEADERS: Final = (
    ("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
)
_STATIC: Final = {
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
}


@attrs.define
class Context:
    """One request in flight: the request, its CSRF token, the flash to show, cookies to set."""

    request: Request
    csrf: str
    flash: str | None = None
    cookies: list[str] = attrs.field(factory=list)

    def cookie(self, name: str, value: str, *, max_age: int | None = None) -> None:
        """Set a cookie for the console's path: HttpOnly, SameSite=Strict."""
        age = "" if max_age is None else f"; Max-Age={max_age}"
        path = self.request.root or "/"
        self.cookies.append(f"{name}={value}; Path={path}; HttpOnly; SameSite=Strict{age}")


class Console:
    """chimeway's web console over ``engine``'s ledger.

    - ``authorize(request) -> bool``: ``False`` answers 403. Default: allow
      (the host application's authentication stands in front).
    - ``actor(request) -> str``: who acts, written into the journal
      (default ``"console"``).
    - ``mask_recipient(str) -> str``: how recipients are shown
      (default :func:`~chimeway_web.safety.mask_recipient`).
    - ``read_only``: no action buttons, and every POST is a 403.
    - ``secret``: the key of the CSRF and flash signatures; ``None`` makes a
      random one for this process (several processes behind one balancer
      need a shared secret).

    :attr:`wsgi` and :attr:`asgi` are the console as a WSGI and an ASGI
    application; both honour their mount prefix in every link.
    """

    def __init__(
        self,
        engine: Chimeway,
        *,
        authorize: Callable[[Request], bool] | None = None,
        actor: Callable[[Request], str] | None = None,
        mask_recipient: Callable[[str], str] = mask_recipient,
        read_only: bool = False,
        secret: str | bytes | None = None,
    ) -> None:
        if not isinstance(engine, Chimeway):
            raise TypeError(f"engine must be a Chimeway, not {type(engine).__name__}")
        if not isinstance(engine.store, SQLStore):
            raise TypeError("the console reads a SQLStore ledger")
        self.engine = engine
        self.authorize = authorize
        self.actor = actor
        self.mask_recipient = mask_recipient
        self.read_only = bool(read_only)
        self._signer = Signer(secret)
        self._templates = jinja2.Environment(
            loader=jinja2.PackageLoader("chimeway_web", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self._templates.filters["shown"] = shown
        self._templates.filters["masked"] = lambda value: shown(self.mask_recipient(str(value)))
        self._templates.filters["scrubbed"] = lambda value: shown(
            mask_emails(str(value), self.mask_recipient)
        )
        self._templates.filters["when"] = pages.when
        self._router = Router()
        pages.route(self._router, self)
        actions.route(self._router, self)
        self._router.add("/static/<name>", {"GET": self._static})
        self.wsgi: Final = wsgi_app(self.handle)
        self.asgi: Final = asgi_app(self.handle)

    @property
    def store(self) -> SQLStore:
        """The ledger the console reads."""
        store: SQLStore = self.engine.store
        return store

    def who(self, request: Request) -> str:
        """Who acts on ``request``: ``actor``'s answer, else ``"console"``."""
        return "console" if self.actor is None else str(self.actor(request))

    # ------------------------------------------------------------------ serving

    def handle(self, request: Request) -> Response:
        """Answer one request (every page, action and static file goes through here)."""
        context = Context(request=request, csrf=self._csrf(request))
        try:
            handler, parts = self._admit(request)
            flash = self._signer.unsign(request.cookies.get(FLASH_COOKIE))
            if flash is not None and request.method == "GET":
                context.flash = flash
                context.cookie(FLASH_COOKIE, "", max_age=0)
            response: Response = handler(context, **parts)
        except HTTPError as error:
            response = self.render(
                context, "error.html", status=error.status, message=error.message
            )
        except Exception:
            logger.exception("chimeway console: %s %s failed", request.method, request.path)
            response = self.render(context, "error.html", status=500, message="internal error")
        if CSRF_COOKIE not in request.cookies or request.cookies[CSRF_COOKIE] != context.csrf:
            context.cookie(CSRF_COOKIE, context.csrf)
        headers = [*response.headers, *(("Set-Cookie", c) for c in context.cookies)]
        return attrs.evolve(response, headers=headers)

    def _admit(self, request: Request) -> tuple[Handler, dict[str, str]]:
        """The route's handler, once the request may run it; else :class:`HTTPError` (403)."""
        if self.authorize is not None and not self.authorize(request):
            raise HTTPError(403, "not authorized")
        found = self._router.resolve(request.method, request.path)
        if request.method == "POST":
            if self.read_only:
                raise HTTPError(403, "the console is read-only")
            cookie, submitted = request.cookies.get(CSRF_COOKIE), request.form.get(CSRF_FIELD)
            if not self._signer.csrf_ok(cookie, submitted):
                raise HTTPError(403, "missing or wrong CSRF token: reload the page")
        return found

    def _csrf(self, request: Request) -> str:
        current = request.cookies.get(CSRF_COOKIE)
        if current is not None and self._signer.unsign(current) is not None:
            return current
        return self._signer.new_csrf()

    def flash_and_redirect(self, context: Context, message: str, path: str) -> Response:
        """A 303 to ``path`` that shows ``message`` once on arrival."""
        context.cookie(FLASH_COOKIE, self._signer.sign(message))
        return Response(status=303, headers=[("Location", context.request.url(path))])

    def render(
        self, context: Context, template: str, *, status: int = 200, **values: Any
    ) -> Response:
        """The page ``template`` with ``values``, as an HTML response."""
        page = self._templates.get_template(template).render(
            request=context.request,
            url=context.request.url,
            csrf=context.csrf,
            csrf_field=CSRF_FIELD,
            flash=context.flash,
            read_only=self.read_only,
            status=status,
            **values,
        )
        return Response(
            status=status,
            body=page.encode(),
            headers=[("Content-Type", "text/html; charset=utf-8"), *_SECURITY_HEADERS],
        )

    def _static(self, _context: Context, name: str) -> Response:
        content_type = _STATIC.get(name)
        if content_type is None:
            raise HTTPError(404, "no such file")
        body = files("chimeway_web").joinpath("static", name).read_bytes()
        return Response(
            body=body,
            headers=[("Content-Type", content_type), ("Cache-Control", "max-age=3600")],
        )


def engine_error(error: ChimewayError) -> str:
    """An engine refusal as one line for a flash message (redacted, controls visible)."""
    return shown(str(error))
