"""What bkd knows about each host, kept in memory so that `status`,
`schedule.list` and `metrics` never walk trees or read the job history:

- facts: what the host's directory holds (newest complete snapshot not dated
  in the future, entries dated in the future, archives, monthly copies),
  re-read after every change bkd makes and by the freshness loop (a
  directory whose mtime has not moved is not listed again);
- records: how its runs went (last result, failure streak, last attempt),
  loaded once at start and updated as runs end.

One host whose directory cannot be read gets an `error`; the others are
unaffected."""

from __future__ import annotations

import bisect
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import structlog

from bkctl.protocol import Kind

from .. import __version__
from ..config.models import Config, format_duration
from ..infra import clock
from ..runs.plan import Lane
from ..runs.registry import Registry, Run
from ..schedule.due import archive_due_at, is_stale, monthly_due_at, next_run
from ..tree import upstream as upstream_record
from ..tree.layout import ArchiveFile, HostDir, SnapshotName

log = structlog.get_logger()


@dataclass(frozen=True)
class HostFacts:
    latest: SnapshotName | None = None  # newest complete snapshot not dated in the future
    snapshots: int = 0
    future: tuple[str, ...] = ()  # snapshots and archives dated in the future (a clock step)
    newest_archive: SnapshotName | None = None  # snapshot of the newest archive not dated in the future
    archives: int = 0
    monthly: tuple[str, ...] = ()
    error: str | None = None  # the directory could not be read
    upstream: upstream_record.Upstream | None = None  # a replicated host: what its last pull saw of the primary


@dataclass(frozen=True)
class _Listing:
    """What a host's directories held when last read. Snapshots are kept as
    plain tuples of strings and floats, which the garbage collector stops
    tracking: 100,000 long-lived SnapshotNames made each full collection
    (every few hundred calls) pause the daemon for 50 ms."""

    stamp: tuple[int | None, ...]  # mtime_ns of hourly/, archives/ and monthly/ (None: missing)
    names: tuple[str, ...]  # complete snapshots, oldest first
    times: tuple[float, ...]  # their times (Unix seconds)
    archives: list[ArchiveFile]
    monthly: tuple[str, ...]


# By host directory. The freshness loop re-reads every host every minute;
# with a thousand snapshots each that was most of an idle daemon's CPU and a
# burst that slowed every call made during it. A directory whose mtime has not
# moved holds the same entries, so its listing is reused.
_listings: dict[Path, _Listing] = {}
# A directory changed this recently may change again within the same mtime
# tick, unseen: more than the coarsest timestamps a backup root may have (2 s).
RACY_NS = 3_000_000_000


def _stamp(host_dir: HostDir) -> tuple[int | None, ...]:
    stamp = []
    for directory in (host_dir.hourly, host_dir.archives, host_dir.monthly):
        try:
            stamp.append(os.stat(directory).st_mtime_ns)
        except FileNotFoundError:
            stamp.append(None)
    return tuple(stamp)


def _listing(host_dir: HostDir) -> _Listing:
    started = time.time_ns()
    stamp = _stamp(host_dir)
    cached = _listings.get(host_dir.root)
    if cached is not None and cached.stamp == stamp:
        return cached
    snapshots = host_dir.snapshots()
    listing = _Listing(stamp, tuple(map(str, snapshots)), tuple(s.time.timestamp() for s in snapshots),
                       host_dir.archive_files(), tuple(host_dir.monthly_copies()))
    if all(mtime is None or mtime < started - RACY_NS for mtime in stamp):
        _listings[host_dir.root] = listing
    else:  # a change in the same tick would leave the mtime as it is: read again next time
        _listings.pop(host_dir.root, None)
    return listing


def read_facts(host_dir: HostDir, now: datetime) -> HostFacts:
    try:
        listing = _listing(host_dir)
    except OSError as e:
        where = os.fsdecode(e.filename) if e.filename else str(host_dir.root)
        return HostFacts(error=f"cannot read {where}: {e.strerror or e}")
    names, archives = listing.names, listing.archives
    split = bisect.bisect_right(listing.times, now.timestamp())  # sorted: the past, then the future
    past_archives = [a for a in archives if a.snapshot.time <= now]
    future = names[split:] + tuple(a.path.name for a in archives if a.snapshot.time > now)
    return HostFacts(latest=SnapshotName.parse(names[split - 1]) if split else None, snapshots=len(names),
                     future=future, newest_archive=past_archives[-1].snapshot if past_archives else None,
                     archives=len(archives), monthly=listing.monthly, upstream=upstream_record.read(host_dir))


@dataclass
class HostRecord:
    added: datetime | None = None  # first seen in the config: a host that never succeeded is stale from here
    last_status: str | None = None
    last_error: str | None = None
    last_finished: datetime | None = None
    last_attempt: datetime | None = None  # the last snapshot run's start: the schedule counts from it too
    consecutive_failures: int = 0
    heavy_attempt: dict[Kind, datetime] = field(default_factory=dict)


class ReadModel:
    def __init__(self, config: Config, registry: Registry, started: datetime):
        self.config = config  # kept current by the runtime's reload listener
        self.registry = registry
        self.started = started
        self.facts: dict[str, HostFacts] = {}
        self.records: dict[str, HostRecord] = {}
        self.extra: dict = {}  # filled by app: deletion_queue, subscribers, alerts per host

    def load_records(self, rows: dict[str, dict]) -> None:
        for host, row in rows.items():
            self.records[host] = HostRecord(
                added=clock.parse(row["added"]), last_status=row["last_status"], last_error=row["last_error"],
                last_finished=clock.parse(row["last_finished"]), last_attempt=clock.parse(row["last_attempt"]),
                consecutive_failures=row["consecutive_failures"])

    def record(self, host: str) -> HostRecord:
        return self.records.setdefault(host, HostRecord(added=clock.now()))

    def refresh(self, host: str) -> HostFacts:
        facts = read_facts(HostDir.of(self.config.backup_root, host), clock.now())
        self.facts[host] = facts
        return facts

    def refresh_all(self) -> None:
        for host in self.config.host:
            self.refresh(host.name)

    def facts_of(self, host: str) -> HostFacts:
        return self.facts.get(host) or self.refresh(host)

    # ---- scheduling -----------------------------------------------------------

    def snapshot_due(self, host: str, now: datetime) -> datetime | None:
        config = self.config
        settings = config.settings(config.find_host(host))
        if not settings.schedule.enabled:
            return None
        latest = self.facts_of(host).latest
        return next_run(latest.time if latest else None, self.record(host).last_attempt,
                        settings.schedule.snapshot_every, now)

    def heavy_due(self, host: str, now: datetime) -> list[tuple[Kind, datetime]]:
        """(kind, when) of the host's archive and monthly copy, where scheduled."""
        config = self.config
        settings = config.settings(config.find_host(host))
        if not settings.schedule.enabled:
            return []
        facts, attempts = self.facts_of(host), self.record(host).heavy_attempt
        every = settings.schedule.archive_every
        due = []
        if settings.archive.enabled:
            when = archive_due_at(facts.latest, facts.newest_archive, attempts.get(Kind.ARCHIVE), every, now)
            if when:
                due.append((Kind.ARCHIVE, when))
        if config.monthly.enabled:
            when = monthly_due_at(facts.latest, facts.monthly, settings.schedule.monthly_day,
                                  attempts.get(Kind.MONTHLY), every, now)
            if when:
                due.append((Kind.MONTHLY, when))
        return due

    # ---- views -------------------------------------------------------------------

    def _run_view(self, run: Run | None) -> dict:
        return {"state": str(run.status) if run else "idle", "job_id": run.job_id if run else None,
                "stage": run.stage and str(run.stage) if run else None,
                "progress": run.progress if run else None}

    def status(self, now: datetime) -> dict:
        config = self.config
        hosts = {}
        for host in config.host:
            name = host.name
            facts, record = self.facts_of(name), self.record(name)
            latest = facts.latest
            heavy = self.registry.busy_run(name, Lane.HEAVY)
            settings = config.settings(host)
            hosts[name] = {
                **self._run_view(self.registry.busy_run(name, Lane.SNAPSHOT)),
                "heavy": {"kind": str(heavy.kind), **self._run_view(heavy)} if heavy and heavy.status.value == "running" else None,
                "last_snapshot": str(latest) if latest else None,
                "last_snapshot_time": clock.iso(latest.time) if latest else None,
                "age_s": int((now - latest.time).total_seconds()) if latest else None,
                "stale": is_stale(latest.time if latest else None, record.added, settings, now),
                "last_result": record.last_status,
                "last_error": record.last_error,
                "next_run": clock.iso(self.snapshot_due(name, now)),
                "future_entries": len(facts.future),
                "error": facts.error,
            }
        runs = self.registry.runs()
        try:
            disk = os.statvfs(config.backup_root)
            disk_view = {"path": str(config.backup_root), "free_bytes": disk.f_bavail * disk.f_frsize,
                         "total_bytes": disk.f_blocks * disk.f_frsize,
                         "free_inodes": disk.f_favail, "total_inodes": disk.f_files}
        except OSError as e:
            disk_view = {"path": str(config.backup_root), "error": e.strerror}
        return {"job_running": any(run.status.value == "running" for run in runs),
                "running": sum(run.status.value == "running" for run in runs),
                "queued": sum(run.status.value == "queued" for run in runs),
                "hosts": hosts, "disk": disk_view, "started": clock.iso(self.started), "version": __version__,
                **self.extra}

    def schedule_entries(self, now: datetime) -> list[dict]:
        config = self.config
        entries = []
        for host in config.host:
            settings = config.settings(host)
            snapshot = self.snapshot_due(host.name, now)
            entries.append({"host": host.name, "kind": "snapshot",
                            "every": format_duration(settings.schedule.snapshot_every),
                            "next_run": clock.iso(snapshot), "enabled": settings.schedule.enabled})
            heavy = dict(self.heavy_due(host.name, now))
            if settings.archive.enabled:
                # Nothing new to archive yet: the next archive follows the next snapshot.
                newest = self.facts_of(host.name).newest_archive
                archive_at = heavy.get(Kind.ARCHIVE) or (
                    snapshot and max(snapshot, newest.time + settings.schedule.archive_every if newest else snapshot))
                entries.append({"host": host.name, "kind": "archive",
                                "every": format_duration(settings.schedule.archive_every),
                                "next_run": clock.iso(archive_at),
                                "enabled": settings.schedule.enabled})
            if config.monthly.enabled:
                entries.append({"host": host.name, "kind": "monthly",
                                "every": f"monthly on day {settings.schedule.monthly_day}",
                                "next_run": clock.iso(heavy.get(Kind.MONTHLY)),
                                "enabled": settings.schedule.enabled})
        return entries

    def status_line(self) -> str:
        """One line for `systemctl status`: e.g. "3 hosts, 1 running, next 14:00 UTC"."""
        now = clock.now()
        running = sum(run.status.value == "running" for run in self.registry.runs())
        line = f"{len(self.config.host)} hosts, {running} running"
        upcoming = [when for host in self.config.host
                    if not self.registry.busy_run(host.name, Lane.SNAPSHOT)
                    and (when := self.snapshot_due(host.name, now))]
        if upcoming:
            line += f", next {min(upcoming).strftime('%H:%M')} UTC"
        return line
