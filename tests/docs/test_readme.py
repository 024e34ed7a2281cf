"""The README's embedding example runs as written, against SQLite and a Redis client."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from chimeway_core import Chimeway, NewDelivery, WebhookChannel

README = Path(__file__).parents[2] / "README.md"


def _embedding_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Embedding it with RQ", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found is not None, "README.md lost its embedding example"
    return found.group(1)


@pytest.mark.extras
def test_the_embedding_example_takes_the_webhook_url_from_configuration(tmp_path: Path) -> None:
    """The example builds its engine; its webhook URL comes from configuration, not the payload.

    A URL in the payload would be stored in the ledger and POSTed with it;
    webhook URLs often carry a token.
    """
    source = _embedding_example()
    assert 'payload["url"]' not in source
    # The example's hosts do not exist here: the engine is built, nothing is connected.
    source = source.replace("postgresql+psycopg://app@db/app", f"sqlite:///{tmp_path / 'app.db'}")
    namespace: dict[str, object] = {"__name__": "myapp.notify"}
    exec(compile(source, "README.md", "exec"), namespace)
    engine = namespace["engine"]
    assert isinstance(engine, Chimeway)
    assert isinstance(engine.channels["webhook"], WebhookChannel)
    engine.store.create_all()
    created = engine.store.create(
        NewDelivery(channel="webhook", recipient="cus_42", payload={"event": "paid"}),
        now=datetime.now(UTC),
    )
    webhook_url = namespace["webhook_url"]
    assert callable(webhook_url)
    assert "https://hooks.example.com/in/cus_42" == webhook_url(created.delivery)
