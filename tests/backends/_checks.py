"""Checks every queue backend's tests make (Celery, Dramatiq).

:func:`assert_import_names_the_extra`: the adapter without its queue
library is one clear error. :class:`Routed`: an engine routes ``sms`` to a
queue of its own and leaves ``email`` on the backend's queue; a worker of
the routed queue alone must run the sms delivery and its retry, never the
email.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any
from uuid import UUID

import attrs
import pytest

from chimeway_core import DeliveryStatus, Sent, TemporaryFailure
from chimeway_core.engine import Chimeway
from chimeway_core.errors import MissingExtraError
from chimeway_core.retry import RetryPolicy
from chimeway_core.store import SQLStore
from chimeway_core.testing import FakeChannel

__all__ = ["Routed", "assert_import_names_the_extra"]


def assert_import_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, adapter: str, library: str, extra: str
) -> None:
    """Importing ``adapter`` without ``library`` raises MissingExtraError naming ``extra``."""
    monkeypatch.delitem(sys.modules, adapter)
    monkeypatch.setitem(sys.modules, library, None)
    with pytest.raises(MissingExtraError, match=rf'pip install "chimeway\[{extra}\]"') as raised:
        importlib.import_module(adapter)
    assert extra == raised.value.extra


@attrs.define
class Routed:
    """An engine on ``backend`` with ``sms`` routed to ``queue``; the sms fails once first."""

    store: SQLStore
    backend: Any
    queue: str
    retry: RetryPolicy
    sms: FakeChannel = attrs.Factory(lambda: FakeChannel([TemporaryFailure("busy"), Sent()]))
    email: FakeChannel = attrs.Factory(FakeChannel)
    engine: Chimeway = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        channels = {"sms": self.sms, "email": self.email}
        self.engine = Chimeway(
            self.store, self.backend, channels, routes={"sms": self.queue}, retry=self.retry
        )
        self.backend.bind(self.engine)

    def status(self, delivery_id: UUID) -> DeliveryStatus:
        """The delivery's status now."""
        return self.engine.get(delivery_id).delivery.status

    def notify_both(self) -> tuple[UUID, UUID]:
        """Notify one sms and one email delivery; their ids."""
        sms = self.engine.notify("sms", "+15550100").id
        email = self.engine.notify("email", "someone@example.test").id
        return sms, email

    def only_sms_ran(self, email: UUID) -> tuple[int, int, DeliveryStatus]:
        """Expected ``(2, 0, READY)``: both sms calls, no email call, the email still waiting."""
        return (len(self.sms.calls), len(self.email.calls), self.status(email))
