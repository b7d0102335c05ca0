"""Progress that updates in place: on a terminal, one line per host at the
bottom of the output, rewritten as its events arrive (carriage return, clear
to the end of the line) and printed for good, with its newline, when the
host ends; lines that are not progress are printed above them. Elsewhere (a
pipe, a file, TERM=dumb) every update is a line of its own, as a log reads.

A live line is cut to the terminal's width, so that it never wraps and the
cursor always knows how many lines to go up."""

from __future__ import annotations

import os
import unicodedata

from .fmt import strip_colour

CLEAR_LINE = "\033[K"
CLEAR_BELOW = "\033[J"


def can_redraw(stream) -> bool:
    """A terminal that moves its cursor: not a pipe or a file, not TERM=dumb."""
    return stream.isatty() and os.environ.get("TERM") != "dumb"


def columns(stream) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (OSError, ValueError):
        return 80


def fit(text: str, width: int) -> str:
    """text cut to fit in width - 1 columns (a wide character takes two), with … where it was cut."""
    budget = max(2, width - 1)
    widths = [2 if unicodedata.east_asian_width(c) in "WF" else 0 if unicodedata.combining(c) else 1 for c in text]
    if sum(widths) <= budget:
        return text
    used = 0
    for index, columns_taken in enumerate(widths):
        if used + columns_taken > budget - 1:
            return text[:index] + "…"
        used += columns_taken
    return text


class LiveLines:
    """What follow_job writes: update(key, text) a host's live line, end(key, text)
    its last line, print(text) any other line; close() when done."""

    def __init__(self, stream, live: bool | None = None):
        self.stream = stream
        self.live = can_redraw(stream) if live is None else live
        self.lines: dict[str, str] = {}  # key -> its live line, top to bottom (the cursor ends the last one)

    def update(self, key: str, text: str) -> None:
        if not self.live:
            self._write(text + "\n")
            return
        text = fit(strip_colour(text), columns(self.stream))
        if key not in self.lines:
            self._write(("\n" if self.lines else "") + text)
            self.lines[key] = text
            return
        below = len(self.lines) - 1 - list(self.lines).index(key)
        self.lines[key] = text
        if below:
            self._write(f"\r\033[{below}A{CLEAR_LINE}{text}\033[{below}B")
        else:
            self._write(f"\r{CLEAR_LINE}{text}")

    def end(self, key: str, text: str | None) -> None:
        """key's last line (None: none), printed for good where the live lines were; they follow below it."""
        ended = "" if text is None else text + "\n"
        if not self.live:
            self._write(ended)
            return
        had_line = self.lines.pop(key, None) is not None
        self._clear(len(self.lines) + had_line)
        self._write(ended + "\n".join(self.lines.values()))

    def print(self, text: str) -> None:
        """A line for good, above the live lines."""
        if not self.live:
            self._write(text + "\n")
            return
        self._clear(len(self.lines))
        self._write(text + "\n" + "\n".join(self.lines.values()))

    def close(self) -> None:
        """The live lines stay as they are; what comes next starts on a line of its own."""
        if self.live and self.lines:
            self._write("\n")
        self.lines.clear()

    def _clear(self, count: int) -> None:
        """Back to the start of the first of the count lines ending at the cursor; clear them."""
        if count > 0:
            self._write("\r" + (f"\033[{count - 1}A" if count > 1 else "") + CLEAR_BELOW)

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
