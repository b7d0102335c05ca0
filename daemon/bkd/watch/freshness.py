"""The freshness loop: re-reads every host's directory (the filesystem is the
truth), keeps the `stale`, `clock`, `hung`, `replica_lag` and `disk` episodes
in step with it, and expires old archives and monthly copies on schedule."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta

import structlog

from bkctl.protocol import BACKUP_KINDS, Kind, Status

from ..alerts.service import AlertKind, Alerts
from ..config.models import Replica, Schedule, format_duration
from ..config.runtime import Runtime
from ..infra import clock
from ..infra.supervise import woken
from ..runs.housekeeping import Housekeeping
from ..schedule.due import is_stale
from ..runs.registry import Registry
from ..state.hosts import Fleet
from ..tree.facts import HostFacts, read_facts
from ..tree.layout import HostDir
from ..tree.upstream import Upstream
from .disk import DiskWatch

log = structlog.get_logger()

EXPIRE_EVERY = 600.0  # seconds between expiry passes


class Freshness:
    def __init__(self, runtime: Runtime, fleet: Fleet, registry: Registry, alerts: Alerts,
                 housekeeping: Housekeeping, disk: DiskWatch | None = None):
        self.runtime = runtime
        self.fleet = fleet
        self.registry = registry
        self.alerts = alerts
        self.housekeeping = housekeeping
        self.disk = disk
        self._expired_at: float | None = None  # not 0.0: monotonic time starts at boot
        self.wake = asyncio.Event()  # the config changed: hosts and their intervals may be new
        runtime.on_reload(lambda old, new: self.wake.set())

    async def run(self) -> None:
        while True:
            self.wake.clear()
            config = self.runtime.config
            await self.pass_()
            if self._expired_at is None or time.monotonic() - self._expired_at >= EXPIRE_EVERY:
                self._expired_at = time.monotonic()
                await self.housekeeping.expire(config)
            intervals = [settings.schedule.snapshot_every.total_seconds() / 2 for settings in config.hosts.values()]
            if config.alerts.hung_after:
                intervals.append(config.alerts.hung_after.total_seconds() / 2)
            await woken(self.wake, max(1.0, min([60.0, *intervals])))

    async def pass_(self) -> None:
        config = self.runtime.config
        for name, settings in config.hosts.items():
            now = clock.now()
            facts = await asyncio.to_thread(read_facts, HostDir.of(config.backup_root, name), now)
            self.fleet.facts[name] = facts
            latest = facts.latest
            record = self.fleet.record(name)
            if is_stale(latest.time if latest else None, record.added, settings, now):
                if not self.alerts.is_current(AlertKind.STALE, name):
                    limit = (f"more than {settings.schedule.stale_factor:g} x "
                             f"{format_duration(settings.schedule.snapshot_every)}")
                    since = (f"last good snapshot {latest} is {_age(now - latest.time)} old" if latest else
                             f"no good snapshot since it was added {_age(now - record.added)} ago")
                    await self.alerts.raise_(AlertKind.STALE, name, f"{since} ({limit})")
            else:
                await self.alerts.resolve(AlertKind.STALE, name)
            if facts.future:
                if not self.alerts.is_current(AlertKind.CLOCK, name):
                    await self.alerts.raise_(
                        AlertKind.CLOCK, name,
                        f"{len(facts.future)} snapshot(s) or archive(s) dated in the future, e.g. "
                        f"{facts.future[0]}: did the clock step back? They are kept, and ignored for "
                        "freshness, schedule and retention until their time comes")
            else:
                await self.alerts.resolve(AlertKind.CLOCK, name)
            if (upstream := config.upstream_of(name)) is not None:
                await self._lag(name, upstream[0], facts, record.added, now)
        await self._hung(config.alerts.hung_after, clock.now())
        if self.disk is not None:
            await self.disk.check()

    async def _lag(self, name: str, replica: Replica, facts: HostFacts, added: datetime | None,
                   now: datetime) -> None:
        """A replicated host whose copies are more than lag_after behind its
        primary (tree/upstream.py says how that is measured) is `replica_lag`."""
        seen = facts.upstream or Upstream()
        lag, limit = seen.lag(added, now), replica.lag_limit
        if lag is None or lag <= limit:
            await self.alerts.resolve(AlertKind.REPLICA_LAG, name)
        elif not self.alerts.is_current(AlertKind.REPLICA_LAG, name):
            listed = f"listed {_age(now - seen.checked)} ago" if seen.checked else "never listed"
            await self.alerts.raise_(
                AlertKind.REPLICA_LAG, name,
                f"its copies are {_age(lag)} behind primary {replica.name} (more than {format_duration(limit)}): "
                f"newest copy {facts.latest or 'none'}, the primary's newest {seen.primary_newest or 'unknown'} "
                f"({listed})")

    async def _hung(self, hung_after: timedelta | None, now: datetime) -> None:
        """A run still going past its next slot (or hung_after) is `hung`; the
        episode resolves when the run ends."""
        hung: dict[tuple[str, str | None], str] = {}
        for run in self.registry.runs():
            if run.status is not Status.RUNNING or run.started is None or run.plan is None:
                continue
            limit = hung_limit(run.kind, run.plan.settings.schedule, hung_after)
            if limit is not None and now - run.started > limit:
                subject = None if run.kind in BACKUP_KINDS else str(run.kind)
                hung[(run.host, subject)] = (f"the {run.kind} run of job {run.job_id} is still going after "
                                             f"{_age(now - run.started)} (more than {format_duration(limit)})")
        for (host, subject), message in hung.items():
            if not self.alerts.is_current(AlertKind.HUNG, host, subject):
                await self.alerts.raise_(AlertKind.HUNG, host, message, subject)
        for episode in list(self.alerts.current.values()):
            if episode["kind"] == AlertKind.HUNG and (episode["host"], episode["subject"]) not in hung:
                await self.alerts.resolve(AlertKind.HUNG, episode["host"], episode["subject"])


def hung_limit(kind: Kind, schedule: Schedule, hung_after: timedelta | None) -> timedelta | None:
    """How long a run may go before it is hung: hung_after when set, else until
    its next slot (restores have none)."""
    if hung_after is not None:
        return hung_after
    if kind in BACKUP_KINDS:
        return schedule.snapshot_every
    if kind in (Kind.ARCHIVE, Kind.MONTHLY):
        return schedule.archive_every
    return None


def _age(delta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
