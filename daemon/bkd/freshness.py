"""The freshness loop: re-reads every host's directory (the filesystem is the
truth), keeps the `stale` and `clock` episodes in step with it, and expires
old archives and monthly copies on schedule."""

from __future__ import annotations

import asyncio
import time

import structlog

from . import clock
from .alerts import AlertKind, Alerts
from .config.models import format_duration
from .housekeeping import Housekeeping
from .layout import HostDir
from .readmodel import ReadModel, read_facts
from .runtime import Runtime
from .scheduler import is_stale

log = structlog.get_logger()

EXPIRE_EVERY = 600.0  # seconds between expiry passes


class Freshness:
    def __init__(self, runtime: Runtime, readmodel: ReadModel, alerts: Alerts, housekeeping: Housekeeping):
        self.runtime = runtime
        self.readmodel = readmodel
        self.alerts = alerts
        self.housekeeping = housekeeping
        self._expired_at = 0.0

    async def run(self) -> None:
        while True:
            config = self.runtime.config
            await self.pass_()
            if time.monotonic() - self._expired_at >= EXPIRE_EVERY:
                self._expired_at = time.monotonic()
                await self.housekeeping.expire(config)
            intervals = [config.settings(h).schedule.snapshot_every.total_seconds() / 2 for h in config.host]
            await asyncio.sleep(max(1.0, min([60.0, *intervals])))

    async def pass_(self) -> None:
        config = self.runtime.config
        for host in config.host:
            name = host.name
            now = clock.now()
            facts = await asyncio.to_thread(read_facts, HostDir.of(config.backup_root, name), now)
            self.readmodel.facts[name] = facts
            settings = config.settings(host)
            latest = facts.latest
            record = self.readmodel.record(name)
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


def _age(delta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
