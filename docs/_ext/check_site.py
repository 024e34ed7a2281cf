"""Check a built site: no raw Sphinx role, no internal path, nothing loaded from another host.

Run by the ``docs`` nox session after the strict build (``python
docs/_ext/check_site.py site``, from the repository root); exits non-zero and
lists each offence. A raw role would mean docs/_ext/roles.py missed a form; a
path through a private module (``chimeway_core._checks``), in the text or in a
tooltip, or the checkout's absolute path, would mean the API reference shows
how the code is arranged instead of what to import; an external script or
stylesheet would mean the site no longer works offline (Mermaid, fonts).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

#: An inline Sphinx role left as text (``:class:`` followed by code or a backtick).
RAW_ROLE = re.compile(r":(?:py:)?(?:class|meth|attr|func|data|exc|mod|obj|const|type):(?:`|<code>)")
#: A reST literal-block marker left at the end of a paragraph ("the delay is::").
LITERAL_MARKER = re.compile(r"[^\s:]::</p>")
#: A dotted path through one of chimeway's private modules (dunder names are fine).
PRIVATE_PATH = re.compile(r"\bchimeway_(?:core|backends)(?:\.\w+)*?\._[a-z]\w*")
#: A script, stylesheet or preconnect hint that points at another host.
EXTERNAL_ASSET = re.compile(
    r"<(?:script[^>]*\ssrc|link[^>]*\shref)=[\"']?(?:https?:)?//[^\"'\s>]+", re.IGNORECASE
)


def offences(page: str, checkout: str | None = None) -> Iterator[str]:
    """Yield what is wrong with one page's HTML, one line each.

    ``checkout``: the repository's absolute path, which no page may show.
    """
    for match in RAW_ROLE.finditer(page):
        yield f"raw role {match.group(0)!r}"
    for match in LITERAL_MARKER.finditer(page):
        yield f"literal-block marker {match.group(0)!r}"
    for match in PRIVATE_PATH.finditer(page):
        yield f"private path {match.group(0)!r}"
    if checkout and checkout in page:
        yield f"absolute path {checkout!r}"
    for match in EXTERNAL_ASSET.finditer(page):
        yield f"external asset {match.group(0)!r}"


def check(site: Path, checkout: Path | None = None) -> list[str]:
    """Return every offence of the site's pages, prefixed by the page's path."""
    root = str(checkout.resolve()) if checkout else None
    pages = [*sorted(site.rglob("*.html")), *site.glob("search/*.json")]  # what search shows too
    return [
        f"{page.relative_to(site)}: {offence}"
        for page in pages
        for offence in offences(page.read_text(encoding="utf-8"), root)
    ]


def main(argv: list[str]) -> int:
    """Check the site folder given as the only argument."""
    (folder,) = argv or ["site"]
    site = Path(folder)
    if not any(site.rglob("*.html")):
        print(f"check_site: no page under {site}/: build the site first", file=sys.stderr)
        return 2
    found = check(site, checkout=Path(__file__).resolve().parents[2])
    for line in found:
        print(line, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
