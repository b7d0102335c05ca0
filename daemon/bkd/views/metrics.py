"""The Prometheus exposition (SPEC §8): the `metrics` RPC, `bkctl metrics`
and, when [metrics].textfile is set, a node-exporter textfile rewritten
atomically at most every TEXTFILE_EVERY seconds after a change, and at
least every HEARTBEAT_EVERY seconds so that its heartbeat stays fresh.

Two steps: `Metrics.gather` collects the samples (from the per-host views
and a few small tables, never from the job history, so it costs the same
on the first day and after years); `render` formats them in the text format,
exactly: integers as integers, timestamps to the second they name, HELP
and TYPE before each family, label values escaped."""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from bkctl.protocol import BACKUP_KINDS

from .. import __version__
from ..alerts.notify.outbox import Notifier
from ..alerts.service import Alerts
from ..config.models import Config
from ..config.runtime import Runtime
from ..infra import clock
from ..infra.fsutil import write_atomic
from ..infra.supervise import woken
from ..pipeline.versions.service import Versions
from ..runs.housekeeping import Housekeeping
from ..runs.registry import Registry
from ..state.hosts import Fleet
from ..state.store import Store
from .hostview import host_views
from .status import Info
from .replicas import Replicas

TEXTFILE_EVERY = 5.0
HEARTBEAT_EVERY = 60.0  # the textfile is rewritten at least this often, so a stale one means bkd is down

# Every family, in the order it is written: name → (type, help).
HELP = {
    "bkd_build_info": ("gauge", "bkd's version, as a label; always 1."),
    "bkd_start_time_seconds": ("gauge", "When the daemon started (Unix seconds)."),
    "bkd_heartbeat_timestamp_seconds": ("gauge", "When this exposition was made (Unix seconds); the textfile "
                                                 "is rewritten at least every minute while bkd runs."),
    "bkd_healthy": ("gauge", "1 while every supervised loop runs (as for the systemd watchdog), else 0."),
    "bkd_last_success_timestamp_seconds": ("gauge", "Time of the newest complete snapshot (its name, Unix seconds)."),
    "bkd_last_attempt_timestamp_seconds": ("gauge", "Start of the newest snapshot run, whatever its result "
                                                    "(Unix seconds)."),
    "bkd_last_duration_seconds": ("gauge", "Duration of the newest snapshot's run."),
    "bkd_last_bytes": ("gauge", "Bytes in the newest snapshot (regular files)."),
    "bkd_last_files": ("gauge", "Regular files in the newest snapshot."),
    "bkd_last_changed_files": ("gauge", "Files created or modified by the newest snapshot."),
    "bkd_snapshots": ("gauge", "Complete snapshots of the host."),
    "bkd_archives": ("gauge", "Archives of the host."),
    "bkd_monthly_copies": ("gauge", "Monthly (golden) copies of the host."),
    "bkd_host_unique_bytes": ("gauge", "Bytes the host's kept copies take on disk, each inode once (allocated "
                                       "blocks), as bkctl du counts them."),
    "bkd_runs_total": ("counter", "Finished runs by host, kind and status (survives history pruning)."),
    "bkd_failures_total": ("counter", "Backup runs that failed."),
    "bkd_consecutive_failures": ("gauge", "Backup runs of the host that failed in a row (0: the last one worked)."),
    "bkd_stale": ("gauge", "1 when the newest snapshot is older than stale_factor times the interval."),
    "bkd_host_error": ("gauge", "1 when the host's directory cannot be read."),
    "bkd_host_held": ("gauge", "1 while the host's pruning is held after an anomaly (until bkctl hosts release)."),
    "bkd_host_suspect_snapshots": ("gauge", "Unreleased suspect snapshots of the host (an anomaly)."),
    "bkd_last_became_random_files": ("gauge", "Changed files of the newest snapshot whose content went from "
                                              "ordinary to random-looking."),
    "bkd_running": ("gauge", "Runs in progress."),
    "bkd_queued": ("gauge", "Runs waiting for a free slot."),
    "bkd_deletion_queue": ("gauge", "Pruned snapshots still being deleted."),
    "bkd_disk_size_bytes": ("gauge", "Size of the backup root's filesystem."),
    "bkd_disk_free_bytes": ("gauge", "Free space on the backup root (for bkd's user)."),
    "bkd_disk_inodes": ("gauge", "Inodes of the backup root's filesystem."),
    "bkd_disk_free_inodes": ("gauge", "Free inodes on the backup root (for bkd's user)."),
    "bkd_open_alerts": ("gauge", "Alert episodes open or acknowledged, by kind."),
    "bkd_unacknowledged_alerts": ("gauge", "Alert episodes open and not acknowledged, by kind."),
    "bkd_notifications_delivered_total": ("counter", "Notifications delivered, by sink."),
    "bkd_notifications_failed_total": ("counter", "Notifications given up (refused, or undeliverable for a day), "
                                                  "by sink."),
    "bkd_notification_sink_failing": ("gauge", "Delivery attempts of the sink that failed in a row (0: it works)."),
    "bkd_outbox_depth": ("gauge", "Notifications queued for delivery, by sink."),
    "bkd_replica_lag_seconds": ("gauge", "On a replica server: how long the host's copies may have been behind its "
                                         "primary (since the last pull that left nothing newer there to pull)."),
    "bkd_replica_behind": ("gauge", "On a replica server: 1 when the host's copies are more than lag_after behind "
                                    "its primary (bkd's replica_lag rule), else 0."),
    "bkd_replica_upstream_up": ("gauge", "On a replica server: 1 when the last visit of the primary (its host list) "
                                         "worked, else 0."),
}

Samples = dict[str, list[tuple[dict[str, str], object]]]  # family → [(labels, value)]


def _seconds(time) -> int | None:
    return int(time.timestamp()) if time is not None else None


class Metrics:
    """Where the exposition's samples come from."""

    def __init__(self, runtime: Runtime, info: Info, healthy: Callable[[], bool], fleet: Fleet, store: Store,
                 registry: Registry, housekeeping: Housekeeping, alerts: Alerts, notifier: Notifier | None,
                 versions: Versions | None = None, replicas: Replicas | None = None):
        self.runtime = runtime
        self.info = info
        self.healthy = healthy  # the supervisor's verdict
        self.fleet = fleet
        self.store = store
        self.registry = registry
        self.housekeeping = housekeeping
        self.alerts = alerts
        self.notifier = notifier
        self.versions = versions  # the host's space on disk (unique_bytes)
        self.replicas = replicas  # a replica server's upstreams

    async def exposition(self) -> str:
        return render(await self.gather())

    async def gather(self) -> Samples:
        config = self.runtime.config
        now = clock.now()
        samples: Samples = {name: [] for name in HELP}

        def add(name: str, value, **labels: str) -> None:
            if value is not None:
                samples[name].append((labels, value))

        add("bkd_build_info", 1, version=__version__)
        add("bkd_start_time_seconds", _seconds(self.info.started))
        add("bkd_heartbeat_timestamp_seconds", _seconds(now))
        add("bkd_healthy", self.healthy())
        views = host_views(config, self.fleet, now)
        stats = await self.store.snapshots.stats_of_many([(v.name, str(v.latest)) for v in views if v.latest])
        failures: dict[str, int] = {}
        for row in await self.store.jobs.run_counts():
            add("bkd_runs_total", row["count"], host=row["host"], kind=row["kind"], status=row["status"])
            if row["status"] == "failed" and row["kind"] in BACKUP_KINDS:
                failures[row["host"]] = failures.get(row["host"], 0) + row["count"]
        for view in views:
            name, snapshot, facts, record = view.name, view.latest, view.facts, view.record
            if snapshot:
                add("bkd_last_success_timestamp_seconds", _seconds(snapshot.time), host=name)
            add("bkd_last_attempt_timestamp_seconds", _seconds(record.last_attempt), host=name)
            if snapshot:
                recorded = stats.get((name, str(snapshot)), {})
                for metric, key in (("bkd_last_duration_seconds", "duration_s"), ("bkd_last_bytes", "bytes"),
                                    ("bkd_last_files", "files"), ("bkd_last_changed_files", "changed_files")):
                    add(metric, recorded.get(key), host=name)
                add("bkd_last_became_random_files", (recorded.get("profile") or {}).get("became_random"), host=name)
            if facts.error is None:
                add("bkd_snapshots", facts.snapshots, host=name)
                add("bkd_archives", facts.archives, host=name)
                add("bkd_monthly_copies", len(facts.monthly), host=name)
            if self.versions is not None:
                add("bkd_host_unique_bytes", self.versions.unique_bytes(name), host=name)
            add("bkd_stale", view.stale, host=name)
            add("bkd_host_error", facts.error is not None, host=name)
            add("bkd_host_held", facts.held, host=name)
            add("bkd_host_suspect_snapshots", len(facts.suspects), host=name)
            add("bkd_failures_total", failures.get(name, 0), host=name)
            add("bkd_consecutive_failures", record.consecutive_failures, host=name)
        runs = self.registry.runs()
        add("bkd_running", sum(run.status.value == "running" for run in runs))
        add("bkd_queued", sum(run.status.value == "queued" for run in runs))
        add("bkd_deletion_queue", len(self.housekeeping.collector.pending()))
        try:
            disk = os.statvfs(config.backup_root)
        except OSError:
            pass
        else:
            add("bkd_disk_size_bytes", disk.f_blocks * disk.f_frsize)
            add("bkd_disk_free_bytes", disk.f_bavail * disk.f_frsize)
            add("bkd_disk_inodes", disk.f_files)
            add("bkd_disk_free_inodes", disk.f_favail)
        for kind, count in sorted(self.alerts.open_by_kind().items()):
            add("bkd_open_alerts", count, kind=kind)
        unacknowledged: dict[str, int] = {}
        for episode in self.alerts.current.values():
            if episode["state"] == "open":
                unacknowledged[episode["kind"]] = unacknowledged.get(episode["kind"], 0) + 1
        for kind, count in sorted(unacknowledged.items()):
            add("bkd_unacknowledged_alerts", count, kind=kind)
        for replica in config.replica if self.replicas is not None else ():
            for host in self.replicas.hosts_of(replica, now):
                add("bkd_replica_lag_seconds", host["lag_s"], replica=replica.name, host=host["host"])
                add("bkd_replica_behind", host["behind"], replica=replica.name, host=host["host"])
            visit = self.replicas.visit(replica)
            if visit is not None:
                add("bkd_replica_upstream_up", visit.error is None, replica=replica.name)
        if self.notifier is not None:
            for sink in await self.notifier.status():
                add("bkd_notifications_delivered_total", sink["delivered"], sink=sink["name"])
                add("bkd_notifications_failed_total", sink["failed"], sink=sink["name"])
                add("bkd_notification_sink_failing", sink["failing"], sink=sink["name"])
                add("bkd_outbox_depth", sink["queued"], sink=sink["name"])
        return samples


# ---- the text format (version 0.0.4) ---------------------------------------------

def _escape(text: str, quote: bool) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if quote else text


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape(str(value), True)}"' for key, value in labels.items()) + "}"


def format_value(value) -> str:
    """Integers exactly (a timestamp is never rounded), floats as Python's
    shortest round-tripping repr, and the special values Prometheus spells."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def render(samples: Samples) -> str:
    lines = []
    for name, values in samples.items():
        kind, text = HELP[name]
        lines += [f"# HELP {name} {_escape(text, False)}", f"# TYPE {name} {kind}"]
        lines += [f"{name}{_labels(labels)} {format_value(value)}" for labels, value in values]
    return "\n".join(lines) + "\n"


class Textfile:
    """Rewrites [metrics].textfile after changes (`changed`: a run ended, an
    alert moved, a reload), at most every TEXTFILE_EVERY seconds however many
    runs end, so a round of many hosts costs one write every few seconds, not
    one full rebuild per host; and every HEARTBEAT_EVERY seconds in any case,
    which keeps bkd_heartbeat_timestamp_seconds moving while the daemon runs."""

    def __init__(self, runtime: Runtime, exposition: Callable[[], Awaitable[str]]):
        self.runtime = runtime
        self.exposition = exposition
        self.changed = asyncio.Event()
        runtime.on_reload(self._reloaded)

    def _reloaded(self, old: Config, new: Config) -> None:
        self.changed.set()

    async def run(self) -> None:
        while True:
            await woken(self.changed, HEARTBEAT_EVERY)
            self.changed.clear()
            path = self.runtime.config.metrics.textfile
            if path:
                try:
                    text = await self.exposition()
                    await asyncio.to_thread(write_atomic, Path(path), text.encode(), 0o644)
                except Exception:
                    self.changed.set()  # not written: the restarted loop tries again
                    raise
            await asyncio.sleep(TEXTFILE_EVERY)
