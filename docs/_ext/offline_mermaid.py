"""Serve Mermaid from the built site itself, so the diagrams render with no network.

mkdocs-material draws ``mermaid`` fences with the Mermaid library, which it loads
from a CDN unless a global ``mermaid`` is already defined. This MkDocs hook
defines it: the pinned Mermaid release is fetched once from the npm registry
with ``npm pack`` (the tarball's integrity checked against :data:`INTEGRITY`),
cached under the user's cache directory, and added to the site as
``assets/vendor/mermaid.min.js``, with Mermaid's licence beside it. Each page
that draws a diagram loads it (before Material looks for ``mermaid``, which it
does once the page has loaded); the other pages do not pay for its 3.5 MB.
Nothing is committed and nothing lands in the work tree.

A fresh machine needs only Node.js's ``npm`` on the path, for the first build.
To move to a newer Mermaid, change :data:`VERSION` and :data:`INTEGRITY` together
(``npm pack mermaid@X --json`` prints the integrity).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page
from mkdocs.utils import get_relative_url

#: The Mermaid release served (mkdocs-material expects the 11.x API).
VERSION = "11.17.2"
#: The npm registry's integrity of that release's tarball.
INTEGRITY = (
    "sha512-"
    "V6K3C8EBdEsPFZXSKMJe6ppQOENxuHARr9GvHX4hh47lAbhMRD9qf4oEK7LoaRQxULMa80/qt5gHO73aCleBBg=="
)
#: Where the site serves it.
SITE_PATH = "assets/vendor/mermaid.min.js"
#: What a page that draws a diagram contains (pymdownx.superfences' mermaid fence).
DIAGRAM = '<pre class="mermaid">'
#: Files taken out of the package, by their path in the tarball -> name in the cache.
WANTED = {"package/dist/mermaid.min.js": "mermaid.min.js", "package/LICENSE": "LICENSE"}


def cache_dir() -> Path:
    """The folder holding this release, under ``$XDG_CACHE_HOME`` (default ``~/.cache``)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "chimeway-docs" / f"mermaid-{VERSION}"


def ensure_mermaid() -> Path:
    """Return the cached release's folder, fetching it with ``npm pack`` the first time."""
    folder = cache_dir()
    if all((folder / name).is_file() for name in WANTED.values()):
        return folder
    npm = shutil.which("npm")
    if npm is None:
        raise PluginError(
            "the docs serve Mermaid locally and fetch it once with npm: install Node.js's npm "
            f"(apt-get install npm), or put mermaid@{VERSION}'s files in {folder}"
        )
    with tempfile.TemporaryDirectory() as scratch:
        packed = subprocess.run(  # noqa: S603 - fixed arguments, npm from the path
            [npm, "pack", f"mermaid@{VERSION}", "--json", "--pack-destination", scratch],
            capture_output=True,
            text=True,
            check=False,
        )
        if packed.returncode != 0:
            raise PluginError(f"npm pack mermaid@{VERSION} failed:\n{packed.stderr}")
        (meta,) = json.loads(packed.stdout)
        if meta["integrity"] != INTEGRITY:
            raise PluginError(
                f"mermaid@{VERSION} from npm has integrity {meta['integrity']}, "
                f"expected {INTEGRITY}: refusing to serve it"
            )
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder.parent))
        with tarfile.open(Path(scratch) / meta["filename"]) as archive:
            for member, name in WANTED.items():
                source = archive.extractfile(member)
                if source is None:
                    raise PluginError(f"mermaid@{VERSION}'s tarball has no {member}")
                (staging / name).write_bytes(source.read())
    shutil.rmtree(folder, ignore_errors=True)
    shutil.move(staging, folder)  # whole or absent: a half-written cache is never used
    return folder


def on_files(files: Files, *, config: Any) -> Files:
    """Add the local Mermaid and its licence to the site's files."""
    folder = ensure_mermaid()
    for name, uri in (("mermaid.min.js", SITE_PATH), ("LICENSE", f"{SITE_PATH}.LICENSE.txt")):
        files.append(File.generated(config, uri, abs_src_path=str(folder / name)))
    return files


def on_post_page(output: str, *, page: Page, **_: Any) -> str:
    """Load the local Mermaid on a page that draws a diagram, and only there."""
    if DIAGRAM not in output:
        return output
    script = f'<script src="{get_relative_url(SITE_PATH, page.url)}"></script>'
    head, body_end, tail = output.rpartition("</body>")
    if not body_end:
        raise PluginError(f"{page.file.src_uri}: no </body> to load Mermaid before")
    return f"{head}{script}\n{body_end}{tail}"
