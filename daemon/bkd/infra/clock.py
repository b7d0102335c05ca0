"""Time in one place: UTC now, and the ISO-8601 form used on the wire."""

from __future__ import annotations

import calendar
from datetime import datetime, timezone


def now() -> datetime:
    return datetime.now(timezone.utc)


def days_in_month(year: int, month: int) -> int:
    return calendar.monthrange(year, month)[1]


def months_before(time: datetime, months: int) -> datetime:
    """The same instant `months` calendar months earlier (day clamped to the month's end)."""
    year, month = divmod(time.year * 12 + time.month - 1 - months, 12)
    month += 1
    return time.replace(year=year, month=month, day=min(time.day, days_in_month(year, month)))


def iso(time: datetime | None) -> str | None:
    if time is None:
        return None
    return time.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse(text: str | None) -> datetime | None:
    """The time an ISO-8601 string of ours (iso, iso_ms, SQLite's records) names; None for None."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def iso_ms(time: datetime | None) -> str | None:
    """ISO-8601 UTC with milliseconds: job and run records, where order matters."""
    if time is None:
        return None
    return time.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
