"""The Prometheus exposition (SPEC §8): the `metrics` RPC and, when
[metrics].textfile is set, a node-exporter textfile rewritten atomically
after every run."""

from __future__ import annotations

import os
from pathlib import Path

from . import clock
from .fsutil import write_atomic
from .layout import HostDir
from .scheduler import is_stale

HELP = {
    "bkd_last_success_timestamp_seconds": "Time of the newest complete snapshot.",
    "bkd_last_duration_seconds": "Duration of the newest snapshot's transfer.",
    "bkd_last_bytes": "Bytes in the newest snapshot (regular files).",
    "bkd_last_files": "Regular files in the newest snapshot.",
    "bkd_last_changed_files": "Files created or modified by the newest snapshot.",
    "bkd_failures_total": "Host runs that failed, over the job history.",
    "bkd_stale": "1 when the newest snapshot is older than stale_factor times the interval.",
    "bkd_running": "Host runs in progress.",
    "bkd_queued": "Host runs waiting for a free slot.",
    "bkd_deletion_queue": "Pruned snapshots still being deleted.",
    "bkd_disk_free_bytes": "Free space on the backup root.",
    "bkd_open_alerts": "Alerts not yet acknowledged.",
}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


async def exposition(engine) -> str:
    config = engine.config
    now = clock.now()
    samples: dict[str, list[tuple[str, float]]] = {name: [] for name in HELP}
    failures = await engine.store.failure_counts()
    for host in config.host:
        settings = config.settings(host)
        host_dir = HostDir.of(config.backup_root, host.name)
        latest = host_dir.latest_snapshot()
        labels = f'{{host="{_label(host.name)}"}}'
        stats = (await engine.store.snapshot_stats(host.name)).get(str(latest), {}) if latest else {}
        if latest:
            samples["bkd_last_success_timestamp_seconds"].append((labels, latest.time.timestamp()))
            for metric, key in (("bkd_last_duration_seconds", "duration_s"), ("bkd_last_bytes", "bytes"),
                                ("bkd_last_files", "files"), ("bkd_last_changed_files", "changed_files")):
                if stats.get(key) is not None:
                    samples[metric].append((labels, stats[key]))
        stale = is_stale(latest.time if latest else None, settings, now)
        samples["bkd_stale"].append((labels, int(stale)))
        samples["bkd_failures_total"].append((labels, failures.get(host.name, 0)))
    samples["bkd_running"].append(("", sum(r.state == "running" for r in engine.runs.values())))
    samples["bkd_queued"].append(("", sum(r.state == "queued" for r in engine.runs.values())))
    samples["bkd_deletion_queue"].append(("", len(engine.collector.pending())))
    disk = os.statvfs(config.backup_root)
    samples["bkd_disk_free_bytes"].append(("", disk.f_bavail * disk.f_frsize))
    samples["bkd_open_alerts"].append(("", len(await engine.store.list_alerts())))
    lines = []
    for name, values in samples.items():
        kind = "counter" if name.endswith("_total") else "gauge"
        lines += [f"# HELP {name} {HELP[name]}", f"# TYPE {name} {kind}"]
        lines += [f"{name}{labels} {value:g}" if isinstance(value, float) else f"{name}{labels} {value}"
                  for labels, value in values]
    return "\n".join(lines) + "\n"


async def write_textfile(engine) -> None:
    path = engine.config.metrics.textfile
    if path:
        text = await exposition(engine)
        write_atomic(Path(path), text.encode(), mode=0o644)
