"""The console as a Django view: one catch-all URL pattern mounts it in a Django project.

::

    from django.urls import re_path
    from chimeway_web.django import console_view

    urlpatterns = [re_path(r"^ops/console(?P<path>/.*)?$", console_view(console))]

The view hands the request to :attr:`Console.wsgi <chimeway_web.Console.wsgi>`
with ``SCRIPT_NAME`` set to where the pattern matched, so every link carries
the prefix. Django's own request is in the WSGI environ under
:data:`DJANGO_REQUEST`, for an ``authorize`` hook that asks Django about the
user (``request.environ[DJANGO_REQUEST].user.is_staff``). The view is exempt
from Django's CSRF middleware: the console checks its own token on every
POST. Django is imported only when the view is made.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from http.cookies import SimpleCookie
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from chimeway_web.console import Console

__all__ = ["DJANGO_REQUEST", "console_view"]

#: The WSGI environ key holding Django's ``HttpRequest``.
DJANGO_REQUEST: Final = "chimeway.django_request"


def console_view(console: Console) -> Callable[..., Any]:
    """A Django view serving ``console``; route it with a ``path`` group (see above)."""
    from django.http import HttpResponse  # noqa: PLC0415 -- Django is the host's, not ours
    from django.views.decorators.csrf import csrf_exempt  # noqa: PLC0415

    def view(request: Any, path: str | None = None) -> Any:
        rest = path or "/"
        full: str = request.path
        prefix = full[: len(full) - len(rest)] if full.endswith(rest) else full.rstrip("/")
        body: bytes = request.body
        environ = {
            **request.META,
            "SCRIPT_NAME": prefix,
            "PATH_INFO": rest,
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.input": io.BytesIO(body),
            DJANGO_REQUEST: request,
        }
        started: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]]) -> None:
            started.update(status=int(status.split(maxsplit=1)[0]), headers=headers)

        content = b"".join(console.wsgi(environ, start_response))
        response = HttpResponse(content, status=started["status"])
        for name, value in started["headers"]:
            if name.lower() == "set-cookie":
                jar: SimpleCookie = SimpleCookie()
                jar.load(value)
                response.cookies.update(jar)
            else:
                response[name] = value
        return response

    exempt: Callable[..., Any] = csrf_exempt(view)
    return exempt
