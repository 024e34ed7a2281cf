"""Regenerate the docs pages rendered from code: ``python docs/generate.py``."""

from __future__ import annotations

from pathlib import Path

from chimeway_core.render import dispatch_table_markdown, state_machine_markdown

DOCS = Path(__file__).parent

#: page name -> renderer; tests/test_generated_docs.py checks each is current.
PAGES = {
    "dispatch-table.md": dispatch_table_markdown,
    "state-machine.md": state_machine_markdown,
}


def main() -> None:
    """Write every generated page."""
    for name, render in PAGES.items():
        (DOCS / name).write_text(render(), encoding="utf-8")
        print(f"wrote docs/{name}")


if __name__ == "__main__":
    main()
