"""Run every benchmark and write the results, the chart and the docs table.

    python bench/run.py                 # the full run (about 20 minutes)
    python bench/run.py --smoke         # seconds-long: every code path, tiny sizes
    python bench/run.py --only core,engine
    python bench/run.py --render        # chart and docs again from latest.json

A full run writes ``bench/results/latest.json`` (with the targets of the
runs before it: ``history``), the charts ``bench/results/latest*.png``
(copied to ``docs/performance*.png``) and rewrites the generated part of
``docs/performance.md`` (between its markers; the rest of the page is left
alone). A smoke run or an ``--only`` run writes the same files into a
temporary folder (or ``--out``), never over the committed ones; so does a
full run given an ``--out`` of its own. ``nox -s
bench`` runs this script; its arguments follow ``--``.

Every area runs in this process, in turn (never two at once: they would
measure each other); the Celery workers and the scaling and memory workers
are its child processes. An area that fails is reported and the others still
run; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _charts
import _history
import _report
import bench_async
import bench_celery
import bench_core
import bench_dramatiq
import bench_engine
import bench_profile
import bench_rq
import bench_scaling
import bench_store
import bench_web
from _harness import BENCH_DIR, ROOT, Config, Results, log, write_json

AREAS: dict[str, Callable[[Config, Results], None]] = {
    "core": bench_core.run,
    "engine": bench_engine.run,
    "async": bench_async.run,
    "bulk": bench_store.run,
    "rq": bench_rq.run,
    "celery": bench_celery.run,
    "dramatiq": bench_dramatiq.run,
    "scaling": bench_scaling.run,
    "profile": bench_profile.run,
    "web": bench_web.run,
}


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the areas, write JSON, chart and docs; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, temp output")
    parser.add_argument("--out", type=Path, help="folder for latest.json and latest.png")
    parser.add_argument("--only", help=f"comma-separated areas among {', '.join(AREAS)}")
    parser.add_argument(
        "--render", action="store_true", help="no measuring: redraw from latest.json"
    )
    args = parser.parse_args(argv)
    if args.render:
        return render(args.out or BENCH_DIR / "results")
    areas = list(AREAS) if args.only is None else [a.strip() for a in args.only.split(",")]
    unknown = sorted(set(areas) - set(AREAS))
    if unknown:
        parser.error(f"unknown areas {unknown}; choose among {list(AREAS)}")
    out, committed = destination(smoke=args.smoke, only=args.only, out=args.out)
    results = Results(smoke=args.smoke)
    failed = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="chimeway-bench-") as scratch:
        for name in areas:
            workdir = Path(scratch) / name
            workdir.mkdir()
            log(name, "starting")
            area_started = time.perf_counter()
            try:
                AREAS[name](Config(smoke=args.smoke, workdir=workdir), results)
            except Exception:
                failed.append(name)
                results.note(name, "failed: " + traceback.format_exc(limit=3).replace("\n", " "))
            results.timings[name] = time.perf_counter() - area_started
            log(name, f"done in {results.timings[name]:.1f} s")
    results.timings["total"] = time.perf_counter() - started

    data = results.to_json()
    data["meta"]["areas"] = areas
    data["meta"]["failed_areas"] = failed
    previous = out / "latest.json"
    data["history"] = _history.carry(
        data, json.loads(previous.read_text()) if previous.exists() else None
    )
    write_json(out / "latest.json", data)
    publish(data, out, committed=committed)
    return 1 if failed else 0


def destination(*, smoke: bool, only: str | None, out: Path | None) -> tuple[Path, bool]:
    """Where a run writes, and whether that is the committed results (and docs/).

    Only a full run writes over the committed files, and only when no
    ``--out`` names another folder.
    """
    committed_dir = BENCH_DIR / "results"
    full = not smoke and only is None
    if out is None:
        out = committed_dir if full else Path(tempfile.mkdtemp(prefix="chimeway-bench-results-"))
    return out, full and out.resolve() == committed_dir.resolve()


def publish(data: dict[str, Any], out: Path, *, committed: bool) -> None:
    """Draw the charts and write the docs section: into docs/ when ``committed``, else ``out``."""
    docs = ROOT / "docs"
    charts = _charts.draw_all(data, out / "latest")
    page = docs / "performance.md" if committed else out / "performance.md"
    if not committed and (docs / "performance.md").exists():
        shutil.copyfile(docs / "performance.md", page)
    _report.write_docs(data, page, stem="performance", areas=list(AREAS))
    for question, chart in charts.items():
        shutil.copyfile(chart, page.parent / f"performance{_charts.SUFFIXES[question]}.png")
    log("run", f"wrote {out / 'latest.json'}, {len(charts)} charts and {page}")


def render(out: Path) -> int:
    """Redraw the chart and rewrite the docs table from ``out/latest.json``, measuring nothing."""
    data = json.loads((out / "latest.json").read_text())
    publish(data, out, committed=out.resolve() == (BENCH_DIR / "results").resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
