"""The explanation of a delivery: why it is where it is, one line per step."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from chimeway_core.records import DeliveryHistory, JournalKind, resent_from

__all__ = ["explain"]


def explain(history: DeliveryHistory) -> list[str]:
    """Why the delivery is where it is: its attempts and journal in time order, one per line.

    Needs nothing but the history (``chimeway show`` uses it without an
    engine). At equal times the creation comes first, then an attempt's
    start, its end, and the transition it caused.
    """
    lines: list[tuple[datetime, int, int, str]] = []
    original = resent_from(history.delivery)
    of = f" (a resend of {original})" if original is not None else ""
    for seq, entry in enumerate(history.journal):
        before = entry.from_status.value if entry.from_status else "-"
        after = entry.to_status.value if entry.to_status else "-"
        reason = f" ({entry.reason})" if entry.reason else ""
        match entry.kind:
            case JournalKind.CREATED:
                rank, text = 0, f"created: {after}{of}"
            case JournalKind.RESENT:
                rank, text = 3, f"resent as {entry.detail.get('as', '?')}{_by(entry.detail)}"
            case JournalKind.REVEALED:
                rank, text = 3, f"payload revealed{_by(entry.detail)}"
            case JournalKind.DEFERRED:
                until = entry.detail.get("until", "?")
                policy = entry.detail.get("policy")
                by = f" by {policy}" if isinstance(policy, str) else ""
                rank, text = 3, f"deferred until {until}{reason}{by}"
            case _:
                rank, text = (
                    3,
                    f"{entry.kind.value}: {entry.event or '-'} {before} -> {after}{reason}"
                    f"{_where(entry.detail)}{_by(entry.detail)}",
                )
        lines.append((entry.at, rank, seq, text))
    for attempt in history.attempts:
        worker = f" by {attempt.worker}" if attempt.worker else ""
        lines.append(
            (attempt.started_at, 1, attempt.number, f"attempt {attempt.number} started{worker}")
        )
        if attempt.outcome is None:
            continue
        error_class = f"/{attempt.error_class}" if attempt.error_class else ""
        error = f": {attempt.error}" if attempt.error else ""
        at = attempt.finished_at or attempt.started_at
        lines.append(
            (
                at,
                2,
                attempt.number,
                f"attempt {attempt.number} {attempt.outcome.value}{error_class}{error}",
            )
        )
    lines.sort(key=lambda item: item[:3])
    width = max((len(at.isoformat()) for at, _, _, _ in lines), default=0)
    return [f"{at.isoformat():<{width}}  {text}" for at, _, _, text in lines]


def _where(detail: Mapping[str, Any]) -> str:
    """`` at notify by preference``: where a suppression happened, and which policy said so."""
    at = detail.get("at")
    if not isinstance(at, str):
        return ""
    policy = detail.get("policy")
    return f" at {at}" + (f" by {policy}" if isinstance(policy, str) else "")


def _by(detail: Mapping[str, Any]) -> str:
    """`` by alice``: the operator who acted (cancel, resend, reveal), when one is named."""
    by = detail.get("by")
    return f" by {by}" if isinstance(by, str) else ""
