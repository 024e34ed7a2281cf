"""The built site works offline: Mermaid is served locally and the site check catches regressions.

Building the site is slow, so these tests pin the mechanism: mkdocs.yml runs
the hook, which loads the local Mermaid on the pages that draw a diagram, uses
its cache before any network and says how to fix a machine without npm; and
docs/_ext/check_site.py flags a raw role, an internal path or an asset from
another host.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.docs.extensions import load

ROOT = Path(__file__).resolve().parents[2]


check_site = load("check_site")


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        ('<p>Use <a href="#x"><code>Chimeway</code></a>.</p>', []),
        ('<script src="../assets/vendor/mermaid.min.js"></script>', []),
        ("<p>See :class:<code>Chimeway</code>.</p>", ["raw role ':class:<code>'"]),
        ("<p>See :py:meth:`run`.</p>", ["raw role ':py:meth:`'"]),
        ("<p>the delay is::</p>", ["literal-block marker 's::</p>'"]),
        ("<pre><code>::: chimeway_core.engine</code></pre><p>a: b</p>", []),
        (
            '<script src="https://unpkg.com/mermaid@11/dist/mermaid.min.js"></script>',
            ["external asset '<script src=\"https://unpkg.com/mermaid@11/dist/mermaid.min.js'"],
        ),
        (
            '<span title="chimeway_core.ledger._rows.to_delivery">to_delivery</span>',
            ["private path 'chimeway_core.ledger._rows'"],
        ),
        ("<code>chimeway_core.engine.__init__</code> <code>self._lock</code>", []),
        (
            '<link rel="stylesheet" href="//fonts.example/css">',
            ['external asset \'<link rel="stylesheet" href="//fonts.example/css\''],
        ),
    ],
)
def test_check_site_flags_raw_roles_and_external_assets(html: str, expected: list[str]) -> None:
    """A page passes when it has neither a raw role nor an asset from another host."""
    assert expected == list(check_site.offences(html))


def test_check_site_reports_each_page(tmp_path: Path) -> None:
    """The check names the page of each offence and fails only when there is one."""
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "index.html").write_text("<p>fine</p>", encoding="utf-8")
    (tmp_path / "index.html").write_text("<p>:func:`decide`</p>", encoding="utf-8")
    assert ["index.html: raw role ':func:`'"] == check_site.check(tmp_path)
    assert 1 == check_site.main([str(tmp_path)])
    (tmp_path / "index.html").write_text("<p>fine</p>", encoding="utf-8")
    assert 0 == check_site.main([str(tmp_path)])
    (tmp_path / "index.html").write_text(f"<p>{tmp_path}/src/x.py</p>", encoding="utf-8")
    assert [f"index.html: absolute path {str(tmp_path)!r}"] == check_site.check(tmp_path, tmp_path)


@pytest.mark.extras  # mkdocs: the test dependency group brings it
def test_pages_with_a_diagram_load_the_local_mermaid() -> None:
    """mkdocs.yml runs the hook; it adds the script, by a relative path, only where a diagram is."""
    offline = load("offline_mermaid")
    assert "  - docs/_ext/offline_mermaid.py\n" in (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    page = SimpleNamespace(url="backends/rq/", file=SimpleNamespace(src_uri="backends/rq.md"))
    drawn = '<pre class="mermaid"><code>flowchart TD</code></pre></body></html>'
    assert (
        '<pre class="mermaid"><code>flowchart TD</code></pre>'
        '<script src="../../assets/vendor/mermaid.min.js"></script>\n</body></html>'
    ) == offline.on_post_page(drawn, page=page, config={})
    plain = "<p>no diagram</p></body></html>"
    assert plain == offline.on_post_page(plain, page=page, config={})


@pytest.mark.extras  # mkdocs: the test dependency group brings it
def test_hook_uses_its_cache_without_npm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cached release is served as is; with no cache and no npm the build says how to fix it."""
    offline = load("offline_mermaid")
    from mkdocs.exceptions import PluginError

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(offline.shutil, "which", lambda _: None)
    with pytest.raises(PluginError, match=r"install Node\.js's npm"):
        offline.ensure_mermaid()
    folder = offline.cache_dir()
    folder.mkdir(parents=True)
    for name in offline.WANTED.values():
        (folder / name).write_text(name, encoding="utf-8")
    assert folder == offline.ensure_mermaid()
    assert tmp_path in folder.parents
    assert offline.VERSION in folder.name
