"""The charts of a run, one per question a reader brings to docs/performance.md.

- :func:`throughput`: how many deliveries a second, per backend and worker
  kind, chimeway next to the hand-written job doing the same writes;
- :func:`rates`: how close each rate comes to what it is compared with;
- :func:`times`: what a call or a page costs next to the bare operation.

Every axis says which way is better. matplotlib is optional: without it no
chart is drawn and the JSON and the tables are still written.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

#: The chart files of a run, by question: ``<stem><suffix>.png``.
SUFFIXES: Final = {"throughput": "", "rates": "-ratios", "times": "-times"}

RATE_UNITS: Final = frozenset({"deliveries/s", "jobs/s", "rows/s"})

_MET, _MISSED, _NO_TARGET = "#2e7d32", "#c62828", "#9e9e9e"
_CHIMEWAY, _BY_HAND = "#1565c0", "#9e9e9e"


def throughput_rows(data: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The comparisons of chimeway with the hand-written job (anchor A), one per setup."""
    return [
        c
        for c in data["comparisons"]
        if c["figure_name"] == "chimeway"
        and c["anchor_name"].startswith("anchor A")
        and c["figure"]["unit"] in RATE_UNITS
    ]


def setup_name(comparison: Mapping[str, Any]) -> str:
    """A comparison's setup as a user names it: the backend, its worker kind, the database."""
    label = str(comparison["label"])
    if label.startswith("notify -> terminal, memory backend, "):
        return "memory backend (in process), " + label.rsplit(", ", 1)[1]
    return label


def draw_all(data: Mapping[str, Any], stem: Path) -> dict[str, Path]:
    """Every chart of ``data`` that has something to draw, as ``{question: path}``."""
    try:
        import matplotlib as mpl

        mpl.use("Agg")
    except ImportError:
        return {}
    drawers: dict[str, Callable[[Mapping[str, Any], Path], Path | None]] = {
        "throughput": throughput,
        "rates": rates,
        "times": times,
    }
    drawn = {}
    for question, draw in drawers.items():
        path = draw(data, stem.with_name(stem.name + SUFFIXES[question] + ".png"))
        if path is not None:
            drawn[question] = path
    return drawn


def throughput(data: Mapping[str, Any], path: Path) -> Path | None:
    """Deliveries per second per setup: chimeway's bar next to the hand-written job's."""
    import matplotlib.pyplot as plt

    rows = throughput_rows(data)
    if not rows:
        return None
    figure, axes = plt.subplots(figsize=(10, 0.55 * len(rows) + 1.6))
    places = list(range(len(rows)))[::-1]
    for offset, side, colour, name in [
        (0.2, "figure", _CHIMEWAY, "chimeway"),
        (-0.2, "anchor", _BY_HAND, "the hand-written job doing the same writes"),
    ]:
        stats = [c[side] for c in rows]
        axes.barh(
            [p + offset for p in places],
            [s["median"] for s in stats],
            height=0.38,
            xerr=_spans(stats),
            color=colour,
            capsize=2,
            label=name,
        )
    axes.set_yticks(places, [setup_name(c) for c in rows], fontsize=7.5)
    axes.set_xlabel("deliveries per second, median of the runs (more is better)")
    axes.legend(fontsize=8, loc="lower right")
    _finish(figure, axes, data, "Deliveries per second, by backend and worker kind", path)
    return path


def rates(data: Mapping[str, Any], path: Path) -> Path | None:
    """Every rate's ratio to what it is compared with, its target tick, on a log scale."""
    rows = [c for c in data["comparisons"] if c["figure"]["unit"] in RATE_UNITS]
    return _ratios(
        data,
        rows,
        path,
        title="How close each rate comes to what it is compared with",
        xlabel="figure ÷ what it is compared with, same run (log scale): more is better",
    )


def times(data: Mapping[str, Any], path: Path) -> Path | None:
    """Every duration's ratio to the bare operation it wraps, on a log scale."""
    rows = [c for c in data["comparisons"] if c["figure"]["unit"] not in RATE_UNITS]
    return _ratios(
        data,
        rows,
        path,
        title="What a call or a page costs next to the bare operation",
        xlabel="time ÷ the bare operation's, same run (log scale): less is better",
    )


def _ratios(
    data: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    path: Path,
    *,
    title: str,
    xlabel: str,
) -> Path | None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    if not rows:
        return None
    labels = [f"{c['label']}\n{c['figure_name']} ÷ {c['anchor_name']}" for c in rows]
    colours = [
        _NO_TARGET if c["target"] is None else _MET if c["target"]["met"] else _MISSED for c in rows
    ]
    figure, axes = plt.subplots(figsize=(10, 0.42 * len(rows) + 1.6))
    places = list(range(len(rows)))[::-1]
    ratios = [c["ratio"] for c in rows]
    axes.barh(places, [r["median"] for r in ratios], xerr=_spans(ratios), color=colours, capsize=2)
    for place, c in zip(places, rows, strict=True):
        if c["target"] is not None:
            axes.plot([c["target"]["value"]] * 2, [place - 0.4, place + 0.4], color="black", lw=2)
    axes.set_yticks(places, labels, fontsize=6.5)
    axes.set_xscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")  # 0.5, not 5 x 10^-1
    axes.xaxis.set_major_formatter(plain)
    axes.xaxis.set_minor_formatter(plain)
    axes.tick_params(axis="x", which="minor", labelsize=6)
    axes.axvline(1.0, color="black", lw=0.6, ls=":")
    axes.set_xlabel(f"{xlabel}\nblack tick: the target; green: met, red: missed, grey: no target")
    _finish(figure, axes, data, title, path)
    return path


def _spans(stats: Sequence[Mapping[str, Any]]) -> list[list[float]]:
    """Matplotlib's error bars for the min-max of each stat around its median."""
    return [[s["median"] - s["min"] for s in stats], [s["max"] - s["median"] for s in stats]]


def _finish(figure: Any, axes: Any, data: Mapping[str, Any], title: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    smoke = " (smoke run: tiny sizes)" if data["meta"]["smoke"] else ""
    axes.set_title(title + smoke, fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
