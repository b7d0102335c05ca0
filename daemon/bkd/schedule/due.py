"""When work is due (pure functions of times), and the loop that starts it.

Times dated in the future (a clock that stepped back) never count: they
must not hold backups off, make a host look fresh or an archive recent."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import structlog

from bkctl.protocol import Kind

from ..infra import clock
from ..infra.supervise import woken
from ..runs.plan import LANES, Trigger
from ..tree.layout import SnapshotName, month_name

if TYPE_CHECKING:
    from ..runs.jobs import Jobs
    from ..state.hosts import ReadModel
    from ..runs.registry import Registry
    from ..config.runtime import Runtime

log = structlog.get_logger()


def next_run(last_snapshot: datetime | None, last_attempt: datetime | None,
             every: timedelta, now: datetime) -> datetime:
    """Due `every` after the later of the last snapshot and the last attempt (so a
    failing host is retried once per interval, not in a loop); overdue work is due
    now. Times in the future (a clock that stepped back) must not hold backups off."""
    known = [t for t in (last_snapshot, last_attempt) if t is not None and t <= now]
    return max(max(known) + every, now) if known else now


def is_stale(last_snapshot: datetime | None, added: datetime | None, settings, now: datetime) -> bool:
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


class Scheduler:
    """Starts due work; a slot that falls due while the host is still busy
    with that kind of work is coalesced into it, and the log says so."""

    def __init__(self, runtime: Runtime, readmodel: ReadModel, registry: Registry, jobs: Jobs):
        self.runtime = runtime
        self.readmodel = readmodel
        self.registry = registry
        self.jobs = jobs
        self.wake = asyncio.Event()
        self._coalesced: dict[tuple[str, Kind], int] = {}  # (host, kind) → the job a slot was folded into

    async def run(self) -> None:
        while True:
            self.wake.clear()
            soonest = await self.pass_(clock.now())
            timeout = None if soonest is None else max(0.0, (soonest - clock.now()).total_seconds())
            await woken(self.wake, timeout)

    async def pass_(self, now: datetime) -> datetime | None:
        """Start what is due now; return when the next thing falls due."""
        ready: dict[Kind, dict[str, str | None]] = {}
        soonest = None
        for host in self.runtime.config.host:
            name = host.name
            due = [(Kind.SNAPSHOT, when) for when in [self.readmodel.snapshot_due(name, now)] if when]
            due += self.readmodel.heavy_due(name, now)
            for kind, when in due:
                if when > now:
                    soonest = when if soonest is None else min(soonest, when)
                    continue
                busy = self.registry.busy_run(name, LANES[kind][0])
                if busy is None:
                    latest = self.readmodel.facts_of(name).latest
                    ready.setdefault(kind, {})[name] = str(latest) if kind is not Kind.SNAPSHOT and latest else None
                elif self._coalesced.get((name, kind)) != busy.job_id:
                    self._coalesced[(name, kind)] = busy.job_id
                    log.info("schedule.coalesced", host=name, kind=str(kind), due=clock.iso(when),
                             running_job=busy.job_id)
        for kind, hosts in ready.items():
            await self.jobs.start(list(hosts), kind, Trigger.SCHEDULE, snapshots=hosts)
        if ready:
            return clock.now()  # look again at once: starting work moved the times
        return soonest
