"""A progress bar on stderr: sign-ups, then one step per simulated hour (one line per step when
stderr is not a terminal). Counts are printed with their names ("plays archived: 120")."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class Progress:
    def __init__(self, total: int, stream: TextIO | None, width: int = 30, label: str = "hour"):
        self.total = max(1, total)
        self.label = label
        self.stream = stream
        self.width = width
        self.started = time.monotonic()
        self.tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())

    def _line(self, done: int, fields: dict[str, Any], label: str) -> str:
        filled = int(self.width * done / self.total)
        bar = "#" * filled + "." * (self.width - filled)
        extra = ", ".join(f"{k}: {v}" for k, v in fields.items())
        return f"{label} {done:>3}/{self.total} [{bar}] {time.monotonic() - self.started:6.1f}s {extra}"

    def update(self, done: int, fields: dict[str, Any]) -> None:
        if self.stream is None:
            return
        line = self._line(done, fields, self.label)
        if self.tty:
            self.stream.write("\r" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the bar's line on a terminal (the next bar starts on its own line)."""
        if self.stream is not None and self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def done(self, fields: dict[str, Any]) -> None:
        if self.stream is None:
            return
        line = self._line(self.total, fields, "drain")
        self.stream.write(("\r" + line + "\n") if self.tty else line + "\n")
        self.stream.flush()


def note(stream: TextIO | None, text: str) -> None:
    """One line outside the bar (e.g. what the run is starting)."""
    if stream is not None:
        stream.write(text + "\n")
        stream.flush()


def stderr() -> TextIO:
    return sys.stderr
