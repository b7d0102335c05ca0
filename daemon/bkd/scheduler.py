"""When each host's next snapshot is due, and the loop that starts it."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import structlog

from . import clock
from .config.models import format_duration
from .layout import HostDir
from .pipeline.archive import archives, month_name, monthly_copies, monthly_due

if TYPE_CHECKING:
    from .engine import Engine

log = structlog.get_logger()


def next_run(last_snapshot: datetime | None, last_attempt: datetime | None,
             every: timedelta, now: datetime) -> datetime:
    """Due `every` after the later of the last snapshot and the last attempt (so a
    failing host is retried once per interval, not in a loop); overdue work is due
    now. Times in the future (a clock that stepped back) must not hold backups off."""
    known = [t for t in (last_snapshot, last_attempt) if t is not None and t <= now]
    return max(max(known) + every, now) if known else now


def is_stale(last_snapshot: datetime | None, settings, now: datetime) -> bool:
    """Older than stale_factor intervals (or none at all)."""
    limit = settings.schedule.snapshot_every * settings.schedule.stale_factor
    return last_snapshot is None or now - last_snapshot > limit


async def watch_freshness(engine: Engine) -> None:
    """Raise a `stale` alert for a host whose last good snapshot is too old, once
    per episode (while one is open, no second one)."""
    while not engine.stopping:
        now = clock.now()
        open_stale = {a["host"] for a in await engine.store.list_alerts() if a["kind"] == "stale"}
        intervals = []
        for host in engine.config.host:
            settings = engine.config.settings(host)
            intervals.append(settings.schedule.snapshot_every.total_seconds())
            last = HostDir.of(engine.config.backup_root, host.name).latest_snapshot()
            if last and is_stale(last.time, settings, now) and host.name not in open_stale:
                age = int((now - last.time).total_seconds())
                await engine.alert(host.name, "stale", f"last good snapshot {last} is {age}s old "
                                   f"(more than {settings.schedule.stale_factor:g} x "
                                   f"{format_duration(settings.schedule.snapshot_every)})")
        await asyncio.sleep(max(1.0, min([60.0, *[i / 2 for i in intervals]])))


def next_runs(engine: Engine, now: datetime) -> dict[str, datetime]:
    """Each scheduled host's next snapshot time."""
    config = engine.config
    due = {}
    for host in config.host:
        settings = config.settings(host)
        if not settings.schedule.enabled:
            continue
        last = HostDir.of(config.backup_root, host.name).latest_snapshot()
        due[host.name] = next_run(last.time if last else None, engine.last_attempt.get(host.name),
                                  settings.schedule.snapshot_every, now)
    return due


def _next_monthly(host_dir: HostDir, monthly_day: int, now: datetime) -> datetime:
    """The start of the next day on which a monthly copy becomes due."""
    if monthly_due(host_dir, monthly_day, now):
        return now
    year, month = (now.year, now.month + 1) if now.month < 12 else (now.year + 1, 1)
    if month_name(now) not in monthly_copies(host_dir):  # this month's day is still ahead
        year, month = now.year, now.month
    return now.replace(year=year, month=month, day=min(monthly_day, clock.days_in_month(year, month)),
                       hour=0, minute=0, second=0, microsecond=0)


def schedule_entries(engine: Engine, now: datetime) -> list[dict]:
    """Every host's scheduled work. Archives and monthly copies are made right
    after a snapshot, so they are never due before the host's next snapshot."""
    config = engine.config
    snapshot_due = next_runs(engine, now)
    entries = []
    for host in config.host:
        settings = config.settings(host)
        host_dir = HostDir.of(config.backup_root, host.name)
        next_snapshot = snapshot_due.get(host.name)
        work = [("snapshot", format_duration(settings.schedule.snapshot_every), next_snapshot)]
        if settings.archive.enabled:
            existing = archives(host_dir)
            due = existing[-1].snapshot.time + settings.schedule.archive_every if existing else now
            work.append(("archive", format_duration(settings.schedule.archive_every), due))
        if config.monthly.enabled:
            day = settings.schedule.monthly_day
            work.append(("monthly", f"monthly on day {day}", _next_monthly(host_dir, day, now)))
        for kind, every, due in work:
            when = max(due, next_snapshot) if due and next_snapshot else None
            entries.append({"host": host.name, "kind": kind, "every": every, "next_run": clock.iso(when),
                            "enabled": settings.schedule.enabled})
    return entries


async def run_schedule(engine: Engine) -> None:
    coalesced: set[tuple[str, datetime]] = set()
    while not engine.stopping:
        now = clock.now()
        due = next_runs(engine, now)
        for host, when in due.items():
            # Still busy with the previous run: this slot folds into it.
            if when <= now and host in engine.runs and (host, when) not in coalesced:
                coalesced.add((host, when))
                log.info("schedule.coalesced", host=host, due=clock.iso(when),
                         running_job=engine.runs[host].job_id)
        ready = [host for host, when in due.items() if when <= now and host not in engine.runs]
        if ready:
            await engine.start_job(ready, trigger="schedule")
            continue
        # Busy hosts count too, so that a slot falling due during a long run is
        # noticed (and logged as coalesced) when it falls due, not afterwards.
        waiting = [when for host, when in due.items() if when > now]
        timeout = (min(waiting) - now).total_seconds() if waiting else None
        engine.changed.clear()
        try:
            await asyncio.wait_for(engine.changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass
