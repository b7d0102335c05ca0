"""The fleet digest (SPEC §8 "Reports"): what `bkctl report` shows and what the
daily report sends.

`Reports.gather` builds it from what bkd already keeps: the per-host views
(newest snapshot, last result, archives, monthly copies), each host's snapshot
names (one directory listing, for the retention tiers), the per-snapshot
statistics in the database (one indexed range per host: never the trees,
so thirty days cost the same as one), the run results of the period, the
current alert episodes and the disk samples.

Viewers may read it (SPEC §5): counts and outcomes only. Alert messages
and run errors are left out, because they can quote what a command printed
(a hook's last line, rsync's complaint about a file); an alert is shown by
its kind, subject, state and count.

`Reporter` is the supervised loop that queues the digest for the
`[report] notify` sinks once a day at `[report] at` in `[report] timezone`,
through the notification outbox (retried, at least once, one idempotency
key per day and sink)."""

from __future__ import annotations

import asyncio
import bisect
import os
from collections import Counter
from datetime import date, datetime, time, timedelta, timezone, tzinfo

import structlog

from .. import __version__
from ..alerts.notify.outbox import Notifier
from ..alerts.notify.sinks import server_name
from ..alerts.service import Alerts
from ..config.models import Config
from ..config.runtime import Runtime
from ..infra import clock
from ..infra.supervise import woken
from ..pipeline.prune import host_plan
from ..pipeline.versions.service import Versions
from ..state.hosts import Fleet
from ..state.store import Store
from ..tree import copies
from ..tree.layout import SNAPSHOT, TIME_FORMAT, HostDir
from ..watch import disk
from .hostview import host_views
from .replicas import Replicas

log = structlog.get_logger()

TREND_DAYS = 30
DAILY_PERIOD = timedelta(days=1)
MAX_PERIOD = timedelta(days=366)
LAST_SENT = "report.last"  # kv: the local day of the last daily report queued
LOOK_EVERY = 60.0  # seconds: the loop looks at the clock (and a reloaded [report]) at least this often


# ---- when the daily report is due (pure) -----------------------------------------

def due_day(now: datetime, at: time, zone: tzinfo, last_day: str | None) -> str | None:
    """The local day (ISO date) whose report is due at `now`: today's, once
    its time has come, unless it was sent. A daemon that was down at that
    time sends it when it starts the same day; a missed day is not sent late."""
    today = now.astimezone(zone).date()
    if now >= datetime.combine(today, at, tzinfo=zone) and last_day != today.isoformat():
        return today.isoformat()
    return None


def next_time(now: datetime, at: time, zone: tzinfo) -> datetime:
    """The next instant after `now` at which a report is due."""
    today = now.astimezone(zone).date()
    for day in (today, today + timedelta(days=1), today + timedelta(days=2)):
        instant = datetime.combine(day, at, tzinfo=zone)
        if instant > now:
            return instant
    raise AssertionError("unreachable: a day has a time of day")


# ---- the digest -------------------------------------------------------------------

def trend(rows: list[dict], days: list[date], zone: tzinfo) -> list[dict]:
    """One entry per day (in the report's zone): snapshots made, the size of
    the day's last snapshot and the host's space on disk after it (`space`,
    from the version index: null for snapshots made before it was kept),
    files changed over the day, the slowest run.
    rows are sorted by name; a name's day is found by comparing it with the
    names of the days' first instants (names sort as their times do), so a
    month of hourly snapshots is a few string comparisons each."""
    bounds = [_name_at(datetime.combine(day, time(0), tzinfo=zone)) for day in days]
    bounds.append(_name_at(datetime.combine(days[-1] + timedelta(days=1), time(0), tzinfo=zone)))
    entries = [{"day": day.isoformat(), "snapshots": 0, "bytes": None, "space": None, "changed_files": None,
                "duration_s": None} for day in days]
    for row in rows:  # oldest first: the last one of a day sets its size
        index = bisect.bisect_right(bounds, row["name"]) - 1
        if not 0 <= index < len(days) or not SNAPSHOT.fullmatch(row["name"]):
            continue
        entry = entries[index]
        entry["snapshots"] += 1
        if row["bytes"] is not None:
            entry["bytes"] = row["bytes"]
        if row.get("space") is not None:
            entry["space"] = row["space"]
        if row["changed_files"] is not None:
            entry["changed_files"] = (entry["changed_files"] or 0) + row["changed_files"]
        if row["duration_s"] is not None:
            entry["duration_s"] = max(entry["duration_s"] or 0, row["duration_s"])
    return entries


def _period(rows: list[dict], start: str) -> dict:
    made = rows[bisect.bisect_left([r["name"] for r in rows], start):]
    return {"snapshots": len(made), "changed_files": sum(r["changed_files"] or 0 for r in made)}


def _tiers(host_dir: HostDir, policy, now: datetime) -> dict[str, int]:
    """How many complete snapshots are in each retention tier now (`expired`:
    the next prune deletes them), from one listing of hourly/."""
    try:
        return dict(Counter(d.tier for d in host_plan(host_dir, policy, now) if d.tier != "unknown"))
    except OSError:
        return {}


def _copies(host_dir: HostDir) -> dict:
    """The host's monthly copies and archives by name (SNAPSHOT references), oldest first."""
    try:
        return {"monthly_copies": [c.ref for c in copies.monthly_copies(host_dir)],
                "archive_copies": [c.ref for c in copies.archives(host_dir)]}
    except OSError:
        return {"monthly_copies": [], "archive_copies": []}


def _alert(episode: dict, silenced: bool) -> dict:
    return {"id": episode["id"], "kind": episode["kind"], "host": episode["host"], "subject": episode["subject"],
            "state": episode["state"], "count": episode["count"], "first_seen": episode["first_seen"],
            "last_seen": episode["last_seen"], "silenced": silenced}


def _disk(backup_root, samples: list[dict], now: datetime, days: list[date], zone: tzinfo) -> dict:
    try:
        stat = os.statvfs(backup_root)
    except OSError as e:
        return {"error": (e.strerror or "cannot read").lower()}
    sample = disk.sample_of(stat, now)
    samples = [*samples, sample]
    days_left = disk.days_to_full(samples, now)
    used = {}
    for row in samples:  # oldest first: the day's last sample counts
        used[clock.parse(row["time"]).astimezone(zone).date()] = row["used_bytes"]
    total = sample["total_bytes"]
    return {"total_bytes": total, "free_bytes": sample["free_bytes"], "used_bytes": sample["used_bytes"],
            "used_percent": round(100 * (total - sample["free_bytes"]) / total, 1) if total else None,
            "total_inodes": sample["total_inodes"], "free_inodes": sample["free_inodes"],
            "days_to_full": round(days_left, 1) if days_left is not None else None,
            "full_by": (now + timedelta(days=days_left)).astimezone(zone).date().isoformat()
            if days_left is not None and days_left < 36500 else None,
            "trend": [{"day": day.isoformat(), "used_bytes": used.get(day)} for day in days]}


class Reports:
    """The digest's sources."""

    def __init__(self, runtime: Runtime, fleet: Fleet, store: Store, alerts: Alerts, versions: Versions | None = None,
                 replicas: Replicas | None = None):
        self.runtime = runtime
        self.fleet = fleet
        self.store = store
        self.alerts = alerts
        self.versions = versions  # the host's space on disk (unique_bytes)
        self.replicas = replicas  # a replica server's upstreams

    async def gather(self, period: timedelta = DAILY_PERIOD, hosts: list[str] | None = None,
                     trends: bool = True, now: datetime | None = None) -> dict:
        """The digest of the `period` up to now, for `hosts` (default: every
        configured host), with trends over max(TREND_DAYS, period) days unless
        `trends` is false (`bkctl check` needs none)."""
        config = self.runtime.config
        now = now or clock.now()
        zone = config.report.zone
        views = host_views(config, self.fleet, now, hosts)
        names = [view.name for view in views]
        since = now - period
        span = max(TREND_DAYS, -(-period // timedelta(days=1)))
        today = now.astimezone(zone).date()
        days = [today - timedelta(days=n) for n in range(span - 1, -1, -1)]
        first = datetime.combine(days[0], time(0), tzinfo=zone)
        store = self.store
        stats = await store.snapshots.stats_of_many([(v.name, str(v.latest)) for v in views if v.latest])
        results = await store.jobs.results_since(clock.iso_ms(since))
        start = _name_at(since)
        rows = await store.snapshots.trend(names, _name_at(min(first, since)) if trends else start)
        policies = {view.name: view.settings.retention for view in views}

        def per_host() -> dict[str, dict]:
            """The listing of hourly/ and the arithmetic over rows, off the event loop."""
            found = {}
            for name in names:
                found[name] = {"period": _period(rows[name], start), **_copies(HostDir.of(config.backup_root, name))}
                if trends:
                    tiers = _tiers(HostDir.of(config.backup_root, name), policies[name], now)
                    found[name].update(snapshots=sum(tiers.values()), tiers=tiers,
                                       trend=trend(rows[name], days, zone))
            return found

        computed = await asyncio.to_thread(per_host)
        current = sorted(self.alerts.current.values(), key=lambda e: e["id"])
        silenced = {e["id"]: self.alerts.is_silenced(e["kind"], e["host"], now) for e in current}
        digest_hosts = []
        for view in views:
            name, snapshot, facts, record = view.name, view.latest, view.facts, view.record
            recorded = stats.get((name, str(snapshot)), {}) if snapshot else {}
            digest_hosts.append({
                "name": name,
                "last_snapshot": str(snapshot) if snapshot else None,
                "last_snapshot_time": clock.iso(snapshot.time) if snapshot else None,
                "age_s": view.age_s,
                "stale": view.stale,
                "stale_after_s": view.stale_after_s,
                "last_result": record.last_status,
                "last_attempt": clock.iso(record.last_attempt),
                "consecutive_failures": record.consecutive_failures,
                "readable": facts.error is None,
                "held": facts.held, "suspects": list(facts.suspects),
                "bytes": recorded.get("bytes"), "files": recorded.get("files"),
                "changed_files": recorded.get("changed_files"), "duration_s": recorded.get("duration_s"),
                "snapshots": facts.snapshots, "archives": facts.archives, "monthly": len(facts.monthly),
                "unique_bytes": self.versions.unique_bytes(name) if self.versions else None,
                "period": {"runs": results.get(name, {}), **computed[name].pop("period")},
                "alerts": [_alert(e, silenced[e["id"]]) for e in current if e["host"] == name],
                **computed[name],  # with trends: the snapshots counted in this listing, tiers, trend
            })
        samples = await store.disk.samples() if trends else []
        head = await store.audit.newest()  # carried off the server: a later truncation or rewrite shows
        by_kind = Counter(e["kind"] for e in current)
        return {
            "generated": clock.iso(now), "since": clock.iso(since), "period_s": int(period.total_seconds()),
            "server": server_name(config.server_name), "version": __version__, "timezone": config.report.timezone,
            "trend_days": span if trends else 0,
            "hosts": digest_hosts,
            "alerts": {"open": len(current), "unacknowledged": sum(e["state"] == "open" for e in current),
                       "silenced": sum(silenced.values()), "by_kind": dict(sorted(by_kind.items())),
                       "current": [_alert(e, silenced[e["id"]]) for e in current]},
            "disk": _disk(config.backup_root, samples, now, days if trends else [], zone),
            "audit_head": {"id": head.id, "hash": head.hash},
            # A replica's upstreams, without what rsync said (viewers read the digest).
            "upstreams": [{k: v for k, v in upstream.items() if k != "detail"}
                          for upstream in (await self.replicas.gather(now) if self.replicas else [])],
        }


def _name_at(when: datetime) -> str:
    """The snapshot name of an instant: names sort as their times do."""
    return when.astimezone(timezone.utc).strftime(TIME_FORMAT)


# ---- the daily report ---------------------------------------------------------------

class Reporter:
    """The `report` loop (supervised)."""

    def __init__(self, runtime: Runtime, reports: Reports, notifier: Notifier, store: Store):
        self.runtime = runtime
        self.reports = reports
        self.notifier = notifier
        self.store = store
        self.wake = asyncio.Event()
        runtime.on_reload(self._reloaded)

    def _reloaded(self, old: Config, new: Config) -> None:
        self.wake.set()  # [report] may have changed

    async def run(self) -> None:
        while True:
            self.wake.clear()
            config = self.runtime.config.report
            now = clock.now()
            if config.enabled and config.notify:
                day = due_day(now, config.at, config.zone, await self.store.get_value(LAST_SENT))
                if day is not None:
                    await self.send(day, now)
                    continue
            wait = (next_time(now, config.at, config.zone) - now).total_seconds()
            await woken(self.wake, min(LOOK_EVERY, max(1.0, wait)))

    async def send(self, day: str, now: datetime) -> None:
        digest = await self.reports.gather(DAILY_PERIOD, now=now)
        sinks = await self.notifier.queue_report(digest, day)
        await self.store.set_value(LAST_SENT, day)
        log.info("report.queued", day=day, sinks=sinks, hosts=len(digest["hosts"]))
