"""When each host's next snapshot is due, and the loop that starts it."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import structlog

from . import clock
from .engine import Engine
from .layout import HostDir

log = structlog.get_logger()


def next_run(last_snapshot: datetime | None, last_attempt: datetime | None,
             every: timedelta, now: datetime) -> datetime:
    """Due `every` after the later of the last snapshot and the last attempt (so a
    failing host is retried once per interval, not in a loop); overdue work is due
    now. Times in the future (a clock that stepped back) must not hold backups off."""
    known = [t for t in (last_snapshot, last_attempt) if t is not None and t <= now]
    return max(max(known) + every, now) if known else now


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
        waiting = [when for host, when in due.items() if host not in engine.runs]
        timeout = (min(waiting) - now).total_seconds() if waiting else None
        engine.changed.clear()
        try:
            await asyncio.wait_for(engine.changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass
