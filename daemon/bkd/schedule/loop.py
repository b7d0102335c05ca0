"""The scheduler loop: starts due work (schedule/due.py says when), and
coalesces a slot that falls due while the host is still busy with that kind
of work into it, saying so in the log."""

from __future__ import annotations

import asyncio
from datetime import datetime

import structlog

from bkctl.protocol import Kind

from ..config.models import Config
from ..config.runtime import Runtime
from ..infra import clock
from ..infra.supervise import woken
from ..runs.jobs import Jobs
from ..runs.plan import LANES, Trigger
from ..runs.registry import Registry
from ..state.hosts import Fleet
from .due import heavy_due, snapshot_due

log = structlog.get_logger()


class Scheduler:
    """Starts due work; a slot that falls due while the host is still busy
    with that kind of work is coalesced into it, and the log says so."""

    def __init__(self, runtime: Runtime, fleet: Fleet, registry: Registry, jobs: Jobs):
        self.runtime = runtime
        self.fleet = fleet
        self.registry = registry
        self.jobs = jobs
        self.wake = asyncio.Event()
        self._coalesced: dict[tuple[str, Kind], int] = {}  # (host, kind) → the job a slot was folded into
        runtime.on_reload(self._reloaded)

    def _reloaded(self, old: Config, new: Config) -> None:
        self.wake.set()  # hosts, intervals and the schedule itself may have changed

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
        config = self.runtime.config
        for name, settings in config.hosts.items():
            facts, record = self.fleet.facts_of(name), self.fleet.record(name)
            due = [(Kind.SNAPSHOT, when) for when in [snapshot_due(settings, facts, record, now)] if when]
            due += heavy_due(settings, config.monthly.enabled, facts, record, now)
            for kind, when in due:
                if when > now:
                    soonest = when if soonest is None else min(soonest, when)
                    continue
                busy = self.registry.busy_run(name, LANES[kind][0])
                if busy is None:
                    latest = facts.latest
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
