"""When work is due: pure functions of times, a host's settings, facts and
records (schedule/loop.py starts it; views show it).

Times dated in the future (a clock that stepped back) never count: they
must not hold backups off, make a host look fresh or an archive recent."""

from __future__ import annotations

from datetime import datetime, timedelta

from bkctl.protocol import Kind

from ..config.models import HostSettings
from ..infra import clock
from ..state.hosts import HostRecord
from ..tree.facts import HostFacts
from ..tree.layout import SnapshotName, month_name


def next_run(last_snapshot: datetime | None, last_attempt: datetime | None,
             every: timedelta, now: datetime) -> datetime:
    """Due `every` after the later of the last snapshot and the last attempt (so a
    failing host is retried once per interval, not in a loop); overdue work is due
    now. Times in the future (a clock that stepped back) must not hold backups off."""
    known = [t for t in (last_snapshot, last_attempt) if t is not None and t <= now]
    return max(max(known) + every, now) if known else now


def is_stale(last_snapshot: datetime | None, added: datetime | None, settings: HostSettings,
             now: datetime) -> bool:
    """Older than stale_factor intervals; a host that never succeeded counts
    from when it was added."""
    limit = settings.schedule.snapshot_every * settings.schedule.stale_factor
    since = last_snapshot if last_snapshot is not None and last_snapshot <= now else None
    if since is None:
        since = added if added is not None and added <= now else None
    return since is not None and now - since > limit


def archive_due_at(latest: SnapshotName | None, newest_archive: SnapshotName | None,
                   last_attempt: datetime | None, every: timedelta, now: datetime) -> datetime | None:
    """An archive of the newest snapshot is due `every` after the newest
    archive's snapshot (at once if there is none), unless that snapshot is
    already archived; a failed attempt is retried after `every`."""
    if latest is None or (newest_archive is not None and newest_archive >= latest):
        return None
    due = newest_archive.time + every if newest_archive else now
    if last_attempt is not None and last_attempt <= now:
        due = max(due, last_attempt + every)
    return max(due, now)


def monthly_due_at(latest: SnapshotName | None, copies: tuple[str, ...], monthly_day: int,
                   last_attempt: datetime | None, retry: timedelta, now: datetime) -> datetime | None:
    """The golden copy is due on monthly_day (the month's last day if shorter)
    when the month has none yet, at once when the host has none at all."""
    if latest is None:
        return None
    this_month = month_name(now)
    if not copies:
        due = now
    else:
        year, month = (now.year, now.month) if this_month not in copies else \
            ((now.year, now.month + 1) if now.month < 12 else (now.year + 1, 1))
        day = min(monthly_day, clock.days_in_month(year, month))
        due = now.replace(year=year, month=month, day=day, hour=0, minute=0, second=0, microsecond=0)
    if last_attempt is not None and last_attempt <= now:
        due = max(due, last_attempt + retry)
    return max(due, now)


def snapshot_due(settings: HostSettings, facts: HostFacts, record: HostRecord, now: datetime) -> datetime | None:
    """When the host's next snapshot is due; None while its schedule is off."""
    if not settings.schedule.enabled:
        return None
    latest = facts.latest
    return next_run(latest.time if latest else None, record.last_attempt, settings.schedule.snapshot_every, now)


def heavy_due(settings: HostSettings, monthly: bool, facts: HostFacts, record: HostRecord,
              now: datetime) -> list[tuple[Kind, datetime]]:
    """(kind, when) of the host's archive and monthly copy, where scheduled
    (monthly: [monthly] enabled)."""
    if not settings.schedule.enabled:
        return []
    attempts, every = record.heavy_attempt, settings.schedule.archive_every
    due = []
    if settings.archive.enabled:
        when = archive_due_at(facts.latest, facts.newest_archive, attempts.get(Kind.ARCHIVE), every, now)
        if when:
            due.append((Kind.ARCHIVE, when))
    if monthly:
        when = monthly_due_at(facts.latest, facts.monthly, settings.schedule.monthly_day,
                              attempts.get(Kind.MONTHLY), every, now)
        if when:
            due.append((Kind.MONTHLY, when))
    return due
