"""`daemon.info`, `status`, `schedule.list` and the systemd status line:
answered from memory (the per-host views, the registry, the alerts), so a
call costs the same whatever the history holds."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime

from bkctl.protocol import PROTOCOL_VERSION, Kind

from .. import __version__
from ..alerts.service import Alerts
from ..config.models import Config, format_duration
from ..config.runtime import Runtime
from ..infra import clock
from ..infra.events import EventBus
from ..infra.systemd import notify
from ..pipeline.versions.service import Versions
from ..runs.housekeeping import Housekeeping
from ..runs.plan import Lane
from ..runs.registry import Registry, Run
from ..schedule.due import heavy_due
from ..state.hosts import Fleet
from .hostview import host_views
from .results import HostStatus, ScheduleEntry, StatusResult


@dataclass(frozen=True)
class Info:
    """What `daemon.info` tells of this daemon beyond the config."""

    started: datetime
    rsync_version: str
    protocol: int = PROTOCOL_VERSION


def _run_view(run: Run | None) -> dict:
    return {"state": str(run.status) if run else "idle", "job_id": run.job_id if run else None,
            "stage": run.stage and str(run.stage) if run else None,
            "progress": run.progress if run else None}


class StatusView:
    def __init__(self, runtime: Runtime, fleet: Fleet, registry: Registry, alerts: Alerts,
                 housekeeping: Housekeeping, bus: EventBus, info: Info, versions: Versions | None = None):
        self.runtime = runtime
        self.fleet = fleet
        self.registry = registry
        self.alerts = alerts
        self.housekeeping = housekeeping
        self.bus = bus
        self.info = info
        self.versions = versions  # the host's space on disk (unique_bytes)
        runtime.on_reload(self._reloaded)

    def status(self, now: datetime) -> StatusResult:
        config = self.runtime.config
        alerts, hosts = self.alerts, {}
        for view in host_views(config, self.fleet, now):
            name, latest = view.name, view.latest
            heavy = self.registry.busy_run(name, Lane.HEAVY)
            host: HostStatus = {
                **_run_view(self.registry.busy_run(name, Lane.SNAPSHOT)),
                "heavy": {"kind": str(heavy.kind), **_run_view(heavy)} if heavy and heavy.status.value == "running"
                else None,
                "last_snapshot": str(latest) if latest else None,
                "last_snapshot_time": clock.iso(latest.time) if latest else None,
                "age_s": view.age_s,
                "stale": view.stale,
                "last_result": view.record.last_status,
                "last_error": view.record.last_error,
                "next_run": clock.iso(view.next_run),
                "future_entries": len(view.facts.future),
                "held": view.facts.held,
                "suspects": list(view.facts.suspects),
                "unique_bytes": self.versions.unique_bytes(name) if self.versions else None,
                "error": view.facts.error,
                "alerts": alerts.open_for(name),
                "alert_kinds": sorted({e["kind"] for e in alerts.current.values() if e["host"] == name}),
            }
            hosts[name] = host
        runs = self.registry.runs()
        return {"job_running": any(run.status.value == "running" for run in runs),
                "running": sum(run.status.value == "running" for run in runs),
                "queued": sum(run.status.value == "queued" for run in runs),
                "hosts": hosts, "disk": _disk(config), "started": clock.iso(self.info.started),
                "version": __version__, "deletion_queue": self.housekeeping.collector.pending(),
                "subscribers": len(self.bus.subscriptions), "alerts": alerts.summary()}

    def schedule(self, now: datetime) -> list[ScheduleEntry]:
        config = self.runtime.config
        entries: list[ScheduleEntry] = []
        for view in host_views(config, self.fleet, now):
            name, settings, snapshot = view.name, view.settings, view.next_run
            enabled = settings.schedule.enabled
            entries.append({"host": name, "kind": "snapshot",
                            "every": format_duration(settings.schedule.snapshot_every),
                            "next_run": clock.iso(snapshot), "enabled": enabled})
            heavy = dict(heavy_due(settings, config.monthly.enabled, view.facts, view.record, now))
            if settings.archive.enabled:
                # Nothing new to archive yet: the next archive follows the next snapshot.
                newest = view.facts.newest_archive
                archive_at = heavy.get(Kind.ARCHIVE) or (
                    snapshot and max(snapshot, newest.time + settings.schedule.archive_every if newest else snapshot))
                entries.append({"host": name, "kind": "archive",
                                "every": format_duration(settings.schedule.archive_every),
                                "next_run": clock.iso(archive_at), "enabled": enabled})
            if config.monthly.enabled:
                entries.append({"host": name, "kind": "monthly",
                                "every": f"monthly on day {settings.schedule.monthly_day}",
                                "next_run": clock.iso(heavy.get(Kind.MONTHLY)), "enabled": enabled})
        return entries

    def line(self) -> str:
        """One line for `systemctl status`: e.g. "3 hosts, 1 running, next 14:00 UTC"."""
        config, now = self.runtime.config, clock.now()
        running = sum(run.status.value == "running" for run in self.registry.runs())
        line = f"{len(config.hosts)} hosts, {running} running"
        upcoming = [view.next_run for view in host_views(config, self.fleet, now)
                    if view.next_run and not self.registry.busy_run(view.name, Lane.SNAPSHOT)]
        if upcoming:
            line += f", next {min(upcoming).strftime('%H:%M')} UTC"
        return line

    def _reloaded(self, old: Config, new: Config) -> None:
        notify(f"STATUS={self.line()}")


def _disk(config: Config) -> dict:
    try:
        disk = os.statvfs(config.backup_root)
    except OSError as e:
        return {"path": str(config.backup_root), "error": e.strerror}
    return {"path": str(config.backup_root), "free_bytes": disk.f_bavail * disk.f_frsize,
            "total_bytes": disk.f_blocks * disk.f_frsize, "free_inodes": disk.f_favail, "total_inodes": disk.f_files}
