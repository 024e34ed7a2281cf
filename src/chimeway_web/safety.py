"""What keeps the console safe: signed tokens, masked recipients, redacted and visible text.

Theory of operation
-------------------
- :class:`Signer` signs short values with HMAC-SHA256 under the console's
  ``secret`` (or a random key made once per process): the CSRF token and
  the flash message are signed values in cookies, so a client can read but
  not forge them.
- CSRF is a signed double submit: the page's form carries the token its
  cookie holds, and a POST is accepted only when both are there, equal and
  signed by this console (compared in constant time).
- :func:`shown` is how every piece of stored text reaches a page: URL
  credentials (``scheme://user:password@``) redacted, control characters
  written as visible escapes (``\\x07``). Jinja2's autoescape then makes
  the HTML inert.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from typing import Final

__all__ = ["Signer", "mask_emails", "mask_recipient", "redact", "shown", "visible"]

_USERINFO: Final = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)[^/\s@]*@")
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


_EMAIL: Final = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+")


def mask_emails(text: str, mask: Callable[[str], str]) -> str:
    """``text`` with every email address in it passed through ``mask``.

    For text about many deliveries (a channel's errors), where no one
    recipient is known: a provider that quotes the address it refused shows
    it masked. Recipients that are no email (phone numbers, device tokens)
    are not recognized.
    """
    return _EMAIL.sub(lambda m: mask(m.group()), text)


def redact(text: str) -> str:
    """``text`` with the userinfo of every URL in it replaced by ``***``."""
    return _USERINFO.sub(r"\g<scheme>***@", text)


def visible(text: str) -> str:
    """``text`` with control and bidi characters written as escapes (``\\x07``, ``\\u202e``)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def shown(value: object) -> str:
    """How stored text reaches a page: as a string, credentials redacted, controls visible."""
    return visible(redact(value if isinstance(value, str) else str(value)))


def mask_recipient(recipient: str) -> str:
    """The default mask: ``a•••@example.com`` for an email, else the first and last two chars.

    An email keeps its first character and its domain; any other string of
    more than 4 characters keeps its first 2 and last 2, a shorter one
    nothing but a mark.
    """
    local, at, domain = recipient.rpartition("@")
    if at and local and domain:
        return f"{local[0]}•••@{domain}"
    if len(recipient) > 4:
        return f"{recipient[:2]}•••{recipient[-2:]}"
    return "•••"


class Signer:
    """HMAC-SHA256 signatures of short strings under one key.

    ``secret`` (str or bytes) makes signatures that survive a restart and
    hold across processes; ``None`` makes a random key, good for this
    process only.
    """

    def __init__(self, secret: str | bytes | None) -> None:
        if secret is None:
            secret = secrets.token_bytes(32)
        self._key = secret.encode() if isinstance(secret, str) else bytes(secret)

    def _mac(self, value: str) -> str:
        digest = hmac.new(self._key, value.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def sign(self, value: str) -> str:
        """``value`` and its signature, as one cookie-safe token."""
        encoded = base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")
        return f"{encoded}.{self._mac(value)}"

    def unsign(self, token: str | None) -> str | None:
        """The value ``token`` signs, or ``None`` if it is missing, malformed or forged."""
        if not token:
            return None
        encoded, _, mac = token.partition(".")
        try:
            value = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        return value if hmac.compare_digest(mac, self._mac(value)) else None

    def new_csrf(self) -> str:
        """A fresh signed CSRF token."""
        return self.sign(secrets.token_urlsafe(24))

    def csrf_ok(self, cookie: str | None, submitted: str | None) -> bool:
        """Whether the submitted token equals the cookie's and this signer signed it."""
        if not cookie or not submitted:
            return False
        return hmac.compare_digest(cookie, submitted) and self.unsign(cookie) is not None
