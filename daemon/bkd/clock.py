"""Time in one place: UTC now, and the ISO-8601 form used on the wire."""

from __future__ import annotations

from datetime import datetime, timezone


def now() -> datetime:
    return datetime.now(timezone.utc)


def iso(time: datetime | None) -> str | None:
    if time is None:
        return None
    return time.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
