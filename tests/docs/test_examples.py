"""Every Python example in docs/ runs: the blocks of a page run in order, in one namespace.

A block that needs infrastructure a test cannot have (a production database
URL, a provider's SMTP server, a long-running worker) is listed in
:data:`COMPILE_ONLY` with the reason; it must still compile. Adding a block
to that list is a deliberate, reviewed act.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)

#: (page, block index) -> why it only compiles.
COMPILE_ONLY: dict[tuple[str, int], str] = {
    ("backends/celery.md", 2): "a project's modules (proj); tests/backends/celery/shop is one",
    ("backends/celery.md", 3): "a project's modules (proj); tests/backends/celery/shop is one",
    ("backends/celery.md", 4): "a project's modules (proj); tests/backends/celery/shop is one",
    ("backends/celery.md", 5): "a project's modules (proj); tests/backends/celery/shop is one",
    ("backends/rq.md", 1): "starts a worker that runs until stopped (tests/backends/rq run it)",
    ("ledger.md", 1): "a fragment of an application's handler: order, engine, now are the app's",
    ("ledger.md", 3): "migrates a production URL (tests/store/test_migrations.py runs upgrade())",
    ("operations.md", 0): "a fragment: store, backend and channels are the application's",
    (
        "operations.md",
        1,
    ): "migrates a production URL (tests/store/test_migrations.py runs upgrade())",
    ("operations.md", 2): "belongs in an application's Alembic env.py (tests/store/"
    "test_alembic_coexistence.py runs one)",
    ("operations.md", 3): "belongs in an application's Alembic env.py (myapp is the app's)",
    ("operations.md", 4): "a fragment: store, backend and channels are the application's",
    ("testing.md", 1): "a test of an application (myapp); tests/kit/test_app_kit.py runs it",
    ("console.md", 3): "a Django project's urls.py (tests/web/test_mounting.py mounts the view)",
    ("frameworks/django.md", 0): "quotes examples/django_celery (tests/examples run it)",
    ("frameworks/django.md", 1): "quotes examples/django_celery (tests/examples run it)",
    ("frameworks/django.md", 2): "quotes examples/django_celery (tests/examples run it)",
    ("frameworks/django.md", 3): "quotes examples/django_celery (tests/examples run it)",
    ("frameworks/fastapi.md", 0): "quotes examples/fastapi_celery (tests/examples run it)",
    ("frameworks/fastapi.md", 1): "quotes examples/fastapi_celery (tests/examples run it)",
    ("frameworks/fastapi.md", 2): "quotes examples/fastapi_celery (tests/examples run it)",
    ("frameworks/flask.md", 0): "quotes examples/flask_rq (tests/examples run it for real)",
    ("frameworks/flask.md", 1): "quotes examples/flask_rq (tests/examples run it for real)",
    ("frameworks/flask.md", 2): "quotes examples/flask_rq (tests/examples run it for real)",
    ("quickstart.md", 1): "the worker example's app module; tests/cli run a module of this shape",
}


#: Pages whose examples import an optional extra (a queue client, psycopg, httpx, alembic).
NEEDS_EXTRAS = frozenset(
    {
        "backends/celery.md",
        "backends/dramatiq.md",
        "backends/rq.md",
        "channels.md",
        "console.md",
        "ledger.md",
        "operations.md",
        "telemetry.md",
    }
)


def _pages() -> list[str]:
    return sorted(
        str(path.relative_to(DOCS)) for path in DOCS.rglob("*.md") if BLOCK.search(path.read_text())
    )


@pytest.mark.parametrize(
    "page",
    [
        pytest.param(page, marks=pytest.mark.extras) if page in NEEDS_EXTRAS else page
        for page in _pages()
    ],
)
def test_page_examples_run(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each python block of the page runs in order (or compiles, where listed and why)."""
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"docs_{page.replace('/', '_')[:-3]}"}
    for index, block in enumerate(BLOCK.findall((DOCS / page).read_text(encoding="utf-8"))):
        code = compile(block, f"docs/{page} block {index}", "exec")
        if (page, index) in COMPILE_ONLY:
            continue
        exec(code, namespace)
    _ = os  # the namespace may hold open resources; pytest's tmp_path cleans up files
