"""Human formatting shared by the CLI and the TUI: ages, sizes, tables, colour,
and control characters made visible (`safe`), whatever their source."""

from __future__ import annotations

import os
import re
import sys
from datetime import datetime, timezone, tzinfo


def safe(text: str) -> str:
    """text as it may reach a terminal, a page or a mail: every character that
    is not printable is written visibly escaped — C0 controls and DEL as
    \\x1b (a tab, newline or return as \\t, \\n, \\r), C1 controls and other
    invisible or unpaired characters (bidi overrides, line separators, lone
    surrogates) as \\u009b, and a byte that is not UTF-8 (carried as
    U+DC80–U+DCFF, as os.fsdecode does) as \\xNN, the byte itself. Escaping
    twice changes nothing."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escaped(c) for c in text)


_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escaped(c: str) -> str:
    code = ord(c)
    if c in _SHORT:
        return _SHORT[c]
    if code < 0x20 or code == 0x7F:
        return f"\\x{code:02x}"
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def safe_tree(value):
    """A copy of a decoded JSON value (an answer, an event) with every string,
    keys included, made safe: what human output renders."""
    if isinstance(value, str):
        return safe(value)
    if isinstance(value, dict):
        return {safe_tree(k): safe_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [safe_tree(v) for v in value]
    return value


_COLOURS = {"ok": 32, "warning": 33, "failed": 31, "cancelled": 33, "interrupted": 33, "running": 36}


def colour_allowed(stream=None) -> bool:
    """Colour only on a terminal, and not when NO_COLOR is set (no-color.org) or
    TERM=dumb says the terminal cannot show it: the one rule of bkctl and bkd's log."""
    stream = stream or sys.stdout
    return stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def colour(text: str, status: str | None = None) -> str:
    code = _COLOURS.get(status or text)
    if code and colour_allowed():
        return f"\033[{code}m{text}\033[0m"
    return text


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


_zone: tzinfo | None = None  # None: this process's local time zone (TZ); UTC after use_utc(True)


def use_utc(on: bool) -> None:
    """--utc: every human time in UTC instead of local time."""
    global _zone
    _zone = timezone.utc if on else None


def timestamp(value: str | datetime | None, zone: tzinfo | None = None) -> str:
    """An instant as people read it, always with its zone: `2026-12-07 16:31:09 CET`
    in local time, or in zone when given (the report's own), UTC with --utc
    either way; "-" for none. The daemon sends UTC; --json keeps its exact values."""
    when = parse_time(value) if isinstance(value, str) or value is None else value
    if when is None:
        return "-"
    shown = when.astimezone(_zone or zone)
    return shown.strftime("%Y-%m-%d %H:%M:%S ") + (shown.tzname() or shown.strftime("%z"))


def span(seconds: float) -> str:
    seconds = int(abs(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def relative(value: str | None, now: datetime | None = None) -> str:
    when = parse_time(value)
    if when is None:
        return "-"
    delta = (when - (now or datetime.now(timezone.utc))).total_seconds()
    if abs(delta) < 1:
        return "now"
    return f"in {span(delta)}" if delta > 0 else f"{span(delta)} ago"


def size(count: int | None) -> str:
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024


def number(value) -> str:
    return "-" if value is None else f"{value:,}"


def progress_text(progress: dict | None) -> str:
    if not progress:
        return "-"
    if progress.get("percent") is None:  # the total is not known: only how much so far
        return size(progress.get("bytes"))
    return f"{progress['percent']:.0f}%"


def table(headers: list[str], rows: list[list[str]]) -> str:
    # Widths come from the plain text, so colour codes do not skew alignment.
    plain = [[strip_colour(cell) for cell in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in plain)) if plain else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    for row, plain_row in zip(rows, plain):
        cells = [cell + " " * (w - len(p)) for cell, p, w in zip(row, plain_row, widths)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def strip_colour(text: str) -> str:
    return re.sub(r"\033\[[0-9;]*m", "", text)


SPARK = "▁▂▃▄▅▆▇█"
SPARK_ASCII = "_.-=+*#@"


def sparkline(values: list, ascii: bool = False) -> str:
    """One character per value, scaled to the largest; a gap for a missing one."""
    marks = SPARK_ASCII if ascii else SPARK
    top = max((v for v in values if v is not None), default=0)
    return "".join(" " if v is None else marks[min(len(marks) - 1, int(len(marks) * v / top)) if top else 0]
                   for v in values)


def can_print(text: str, stream=None) -> bool:
    encoding = getattr(stream or sys.stdout, "encoding", None) or "ascii"
    try:
        text.encode(encoding)
        return True
    except (UnicodeEncodeError, LookupError):
        return False


_SPAN_PART = re.compile(r"(\d+)([smhdw])")
_SPAN_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_span(text: str) -> int:
    """'90s', '2h', '1h30m', '7d' → seconds, as the config's durations are written."""
    text = text.strip()
    if not text or _SPAN_PART.sub("", text):
        raise ValueError(f"invalid duration {text!r}: use a number and a unit (s, m, h, d, w), e.g. '2h'")
    return sum(int(n) * _SPAN_UNITS[unit] for n, unit in _SPAN_PART.findall(text))
