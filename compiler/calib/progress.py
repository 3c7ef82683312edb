"""A calibration progress bar: samples done, throughput, time left (stderr, terminals only)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """``update(n)`` after each batch; ``close()`` at the end.

    Draws ``kiln: calibrating [#####.....] 32/64 samples  11.8 samples/s  3 s left``
    on one self-overwriting line, at most 10 times a second; nothing unless
    enabled (default: when ``stream`` is a terminal).
    """

    def __init__(self, total: int | None, *, label: str = "calibrating", stream: TextIO | None = None,
                 enabled: bool | None = None, width: int = 24) -> None:
        self.total = total
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self.width = width
        self.done = 0
        self.start = time.perf_counter()
        self._last = 0.0
        self._shown = False

    @property
    def rate(self) -> float:
        """Samples per second so far."""
        elapsed = time.perf_counter() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def text(self) -> str:
        rate = self.rate
        if self.total:
            filled = int(self.width * min(self.done, self.total) / self.total)
            bar = "[" + "#" * filled + "." * (self.width - filled) + "]"
            eta = f"  {(self.total - self.done) / rate:.0f} s left" if rate > 0 else ""
            return f"kiln: {self.label} {bar} {self.done}/{self.total} samples  {rate:.1f} samples/s{eta}"
        return f"kiln: {self.label} {self.done} samples  {rate:.1f} samples/s"

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last < 0.1 and (self.total is None or self.done < self.total):
            return
        self._last = now
        self.stream.write("\r\x1b[K" + self.text())
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False
