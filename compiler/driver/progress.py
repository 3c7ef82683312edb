"""Progress for long work: one self-overwriting stderr line, only on a terminal."""

from __future__ import annotations

import sys
from typing import TextIO


class Progress:
    """Call with a stage text (``progress("optimizing")``); :meth:`clear` at the end.

    Shows nothing unless the stream is a terminal, so logs and pipes stay clean.
    """

    def __init__(self, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self._shown = False

    def __call__(self, text: str) -> None:
        if self.enabled:
            self.stream.write(f"\r\x1b[Kkiln: {text} ...")
            self.stream.flush()
            self._shown = True

    def clear(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False
