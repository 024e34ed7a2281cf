"""A self-drawn progress bar for a terminal's stderr."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final, TextIO

__all__ = ["ProgressBar"]

_REDRAW_EVERY: Final = 0.1  # seconds: often enough to look alive, rarely enough to cost nothing


class ProgressBar:
    """``[#####.....]  512/1000 deliveries done`` redrawn in place on ``stream``.

    Draws nothing when ``enabled`` is false (stderr is not a terminal), so
    piped and captured output stays clean. Redraws at most every 0.1 s;
    :meth:`close` draws the final state and ends the line.
    """

    def __init__(
        self,
        stream: TextIO,
        total: int,
        *,
        label: str = "deliveries done",
        width: int = 30,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.total = max(total, 1)
        self.label = label
        self.width = width
        self.enabled = enabled
        self._clock = clock
        self._done = 0
        self._drawn_at: float | None = None

    def render(self, done: int) -> str:
        """The bar for ``done`` of the total, without the carriage return."""
        done = min(max(done, 0), self.total)
        filled = self.width * done // self.total
        digits = len(str(self.total))
        bar = "#" * filled + "." * (self.width - filled)
        return f"[{bar}] {done:>{digits}}/{self.total} {self.label}"

    def update(self, done: int) -> None:
        """Record progress; redraw if enough time has passed."""
        self._done = done
        if not self.enabled:
            return
        now = self._clock()
        if self._drawn_at is None or now - self._drawn_at >= _REDRAW_EVERY:
            self._draw()
            self._drawn_at = now

    def close(self) -> None:
        """Draw the last state and end the line."""
        if self.enabled:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self) -> None:
        self.stream.write("\r" + self.render(self._done))
        self.stream.flush()
