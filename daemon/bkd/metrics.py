"""The Prometheus exposition (SPEC §8): the `metrics` RPC and, when
[metrics].textfile is set, a node-exporter textfile rewritten atomically
at most every TEXTFILE_EVERY seconds after a change.

Built from the read model and a few small tables, never from the job
history, so it costs the same on the first day and after years. Values are
exact: integers as integers, timestamps to the second they name."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__, clock
from .fsutil import write_atomic
from .scheduler import is_stale

if TYPE_CHECKING:
    from .app import Services

TEXTFILE_EVERY = 5.0

HELP = {
    "bkd_build_info": ("gauge", "bkd's version, as a label; always 1."),
    "bkd_last_success_timestamp_seconds": ("gauge", "Time of the newest complete snapshot (Unix seconds)."),
    "bkd_last_duration_seconds": ("gauge", "Duration of the newest snapshot's run."),
    "bkd_last_bytes": ("gauge", "Bytes in the newest snapshot (regular files)."),
    "bkd_last_files": ("gauge", "Regular files in the newest snapshot."),
    "bkd_last_changed_files": ("gauge", "Files created or modified by the newest snapshot."),
    "bkd_runs_total": ("counter", "Finished runs by host, kind and status (survives history pruning)."),
    "bkd_failures_total": ("counter", "Backup runs that failed."),
    "bkd_stale": ("gauge", "1 when the newest snapshot is older than stale_factor times the interval."),
    "bkd_host_error": ("gauge", "1 when the host's directory cannot be read."),
    "bkd_running": ("gauge", "Runs in progress."),
    "bkd_queued": ("gauge", "Runs waiting for a free slot."),
    "bkd_deletion_queue": ("gauge", "Pruned snapshots still being deleted."),
    "bkd_disk_free_bytes": ("gauge", "Free space on the backup root."),
    "bkd_open_alerts": ("gauge", "Alert episodes open or acknowledged, by kind."),
    "bkd_unacknowledged_alerts": ("gauge", "Alert episodes open and not acknowledged, by kind."),
    "bkd_notifications_delivered_total": ("counter", "Notifications delivered, by sink."),
    "bkd_notifications_failed_total": ("counter", "Notifications given up (refused, or undeliverable for a day), by sink."),
    "bkd_notification_sink_failing": ("gauge", "Delivery attempts of the sink that failed in a row (0: it works)."),
    "bkd_outbox_depth": ("gauge", "Notifications queued for delivery, by sink."),
}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{key}="{_label(str(value))}"' for key, value in labels.items()) + "}" if labels else ""


def _value(value) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return str(int(value))
    return repr(float(value))


async def exposition(s: Services) -> str:
    config = s.runtime.config
    now = clock.now()
    samples: dict[str, list[tuple[str, object]]] = {name: [] for name in HELP}
    samples["bkd_build_info"].append((_labels(version=__version__), 1))
    readmodel = s.readmodel
    latest = {host.name: readmodel.facts_of(host.name).latest for host in config.host}
    stats = await s.store.snapshots.stats_of_many([(h, str(n)) for h, n in latest.items() if n])
    failures: dict[str, int] = {}
    for row in await s.store.jobs.run_counts():
        samples["bkd_runs_total"].append((_labels(host=row["host"], kind=row["kind"], status=row["status"]),
                                          row["count"]))
        if row["status"] == "failed" and row["kind"] in ("snapshot", "all"):
            failures[row["host"]] = failures.get(row["host"], 0) + row["count"]
    for host in config.host:
        name, snapshot = host.name, latest[host.name]
        labels = _labels(host=name)
        if snapshot:
            samples["bkd_last_success_timestamp_seconds"].append((labels, int(snapshot.time.timestamp())))
            recorded = stats.get((name, str(snapshot)), {})
            for metric, key in (("bkd_last_duration_seconds", "duration_s"), ("bkd_last_bytes", "bytes"),
                                ("bkd_last_files", "files"), ("bkd_last_changed_files", "changed_files")):
                if recorded.get(key) is not None:
                    samples[metric].append((labels, recorded[key]))
        stale = is_stale(snapshot.time if snapshot else None, readmodel.record(name).added,
                         config.settings(host), now)
        samples["bkd_stale"].append((labels, stale))
        samples["bkd_host_error"].append((labels, readmodel.facts_of(name).error is not None))
        samples["bkd_failures_total"].append((labels, failures.get(name, 0)))
    runs = s.registry.runs()
    samples["bkd_running"].append(("", sum(run.status.value == "running" for run in runs)))
    samples["bkd_queued"].append(("", sum(run.status.value == "queued" for run in runs)))
    samples["bkd_deletion_queue"].append(("", len(s.housekeeping.collector.pending())))
    try:
        disk = os.statvfs(config.backup_root)
        samples["bkd_disk_free_bytes"].append(("", disk.f_bavail * disk.f_frsize))
    except OSError:
        pass
    for kind, count in sorted(s.alerts.open_by_kind().items()):
        samples["bkd_open_alerts"].append((_labels(kind=kind), count))
    unacknowledged: dict[str, int] = {}
    for episode in s.alerts.current.values():
        if episode["state"] == "open":
            unacknowledged[episode["kind"]] = unacknowledged.get(episode["kind"], 0) + 1
    for kind, count in sorted(unacknowledged.items()):
        samples["bkd_unacknowledged_alerts"].append((_labels(kind=kind), count))
    if s.notifier is not None:
        for sink in await s.notifier.status():
            labels = _labels(sink=sink["name"])
            samples["bkd_notifications_delivered_total"].append((labels, sink["delivered"]))
            samples["bkd_notifications_failed_total"].append((labels, sink["failed"]))
            samples["bkd_notification_sink_failing"].append((labels, sink["failing"]))
            samples["bkd_outbox_depth"].append((labels, sink["queued"]))
    lines = []
    for name, values in samples.items():
        kind, text = HELP[name]
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        lines += [f"{name}{labels} {_value(value)}" for labels, value in values]
    return "\n".join(lines) + "\n"


class Textfile:
    """Rewrites [metrics].textfile after changes, at most every TEXTFILE_EVERY
    seconds however many runs end, so a round of many hosts costs one write
    every few seconds, not one full rebuild per host."""

    def __init__(self, services: Services):
        self.s = services
        self.changed = asyncio.Event()

    async def run(self) -> None:
        while True:
            await self.changed.wait()
            self.changed.clear()
            path = self.s.runtime.config.metrics.textfile
            if path:
                try:
                    text = await exposition(self.s)
                    await asyncio.to_thread(write_atomic, Path(path), text.encode(), 0o644)
                except Exception:
                    self.changed.set()  # not written: the restarted loop tries again
                    raise
            await asyncio.sleep(TEXTFILE_EVERY)
