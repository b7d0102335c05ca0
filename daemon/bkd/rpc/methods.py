"""THE method table: every RPC method, its params and its handler, in one place.

Dispatch looks names up here and nowhere else (no getattr on request data)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Optional

import structlog
from pydantic import BaseModel, ConfigDict, Field, model_validator

from bkctl import protocol
from .. import __version__, browse, clock, metrics
from ..engine import KINDS
from ..errors import RpcError
from ..events import DEFAULT_QUEUE, TOPICS
from ..layout import HostDir
from ..pipeline import archive, manifest, restore
from ..scheduler import next_runs, schedule_entries

if TYPE_CHECKING:
    from ..app import Daemon


log = structlog.get_logger()

SUBSCRIBER_BUFFER = 8 * 1024  # bytes the kernel and transport each hold for one subscriber


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class NoParams(Params):
    pass


class JobStart(Params):
    hosts: Optional[list[str]] = None
    kind: Literal[KINDS] = "snapshot"
    dry_run: bool = False


class JobCancel(Params):
    hosts: Optional[list[str]] = None
    job_id: Optional[int] = None

    @model_validator(mode="after")
    def _one_target(self):
        if not self.hosts and self.job_id is None:
            raise ValueError("give hosts or job_id")
        return self


class JobGet(Params):
    job_id: int


class JobsList(Params):
    host: Optional[str] = None
    limit: int = Field(20, ge=1, le=10000)


class SnapshotsList(Params):
    host: str


class SnapshotsBrowse(Params):
    host: str
    snapshot: Optional[str] = None
    path: str = "/"
    offset: int = Field(0, ge=0)
    limit: int = Field(browse.DEFAULT_PAGE, ge=1, le=100_000)


class SnapshotsHistory(Params):
    host: str
    path: str


class Restore(Params):
    host: str
    snapshot: str
    path: str
    dest: str
    overwrite: bool = False
    dry_run: bool = False


class Verify(Params):
    host: str
    snapshot: Optional[str] = None
    all: bool = False
    sample: bool = False  # run the background pass's sample now


class AuditList(Params):
    limit: int = Field(50, ge=1, le=100_000)
    verify: bool = False


class AlertsList(Params):
    all: bool = False


class AlertsAck(Params):
    id: int


class Prune(Params):
    hosts: Optional[list[str]] = None
    dry_run: bool = False


class HostsTest(Params):
    hosts: Optional[list[str]] = None


class EventsSubscribe(Params):
    topics: Optional[list[Literal[TOPICS]]] = None
    max_queue: int = Field(DEFAULT_QUEUE, ge=1, le=10000)


@dataclass(frozen=True)
class Method:
    params: type[Params]
    handler: Callable[..., Awaitable]
    role: Literal["viewer", "operator", "admin"]
    streams: bool = False  # handler(params, connection) -> (result, start the stream)
    mutating: bool = False  # changes something: every call goes to the audit log


class Api:
    def __init__(self, daemon: Daemon):
        self.daemon = daemon

    @property
    def engine(self):
        return self.daemon.engine

    async def daemon_info(self, _: NoParams) -> dict:
        d = self.daemon
        return {
            "version": __version__, "protocol": protocol.PROTOCOL_VERSION, "pid": os.getpid(),
            "started": clock.iso(d.started), "config_path": str(d.config_path),
            "backup_root": str(d.config.backup_root), "rsync": d.rsync_version,
        }

    async def status(self, _: NoParams) -> dict:
        engine = self.engine
        config = engine.config
        now = clock.now()
        due = next_runs(engine, now)
        last_runs = await engine.store.last_runs()
        hosts = {}
        for host in config.host:
            run = engine.runs.get(host.name)
            latest = HostDir.of(config.backup_root, host.name).latest_snapshot()
            last = last_runs.get(host.name)
            hosts[host.name] = {
                "state": run.state if run else "idle",
                "job_id": run.job_id if run else None,
                "stage": run.stage if run else None,
                "progress": run.progress if run else None,
                "last_snapshot": str(latest) if latest else None,
                "last_snapshot_time": clock.iso(latest.time) if latest else None,
                "age_s": int((now - latest.time).total_seconds()) if latest else None,
                "last_result": last["status"] if last else None,
                "last_error": last["error"] if last else None,
                "next_run": clock.iso(due.get(host.name)),
            }
        disk = os.statvfs(config.backup_root)
        return {"job_running": bool(engine.runs), "hosts": hosts,
                "deletion_queue": engine.collector.pending(),
                "subscribers": len(engine.bus.subscriptions),
                "disk": {"path": str(config.backup_root), "free_bytes": disk.f_bavail * disk.f_frsize,
                         "total_bytes": disk.f_blocks * disk.f_frsize},
                "started": clock.iso(self.daemon.started), "version": __version__}

    async def job_start(self, p: JobStart) -> dict:
        job_id = await self.engine.start_job(p.hosts, p.kind, p.dry_run, trigger="manual")
        return {"job_id": job_id}

    async def job_cancel(self, p: JobCancel) -> dict:
        return {"cancelled": await self.engine.cancel(p.hosts, p.job_id)}

    async def job_get(self, p: JobGet) -> dict:
        job = await self.engine.store.get_job(p.job_id)
        if job is None:
            raise RpcError(protocol.NOT_FOUND, f"no job {p.job_id}")
        return {"job": job}

    async def jobs_list(self, p: JobsList) -> dict:
        return {"jobs": await self.engine.store.list_jobs(p.host, p.limit)}

    async def snapshots_list(self, p: SnapshotsList) -> dict:
        return {"host": p.host, "snapshots": await self.engine.snapshot_list(p.host)}

    async def schedule_list(self, _: NoParams) -> dict:
        return {"entries": schedule_entries(self.engine, clock.now())}

    async def snapshots_browse(self, p: SnapshotsBrowse) -> dict:
        name, root = browse.snapshot_root(self.engine.known_host_dir(p.host), p.snapshot)
        page = await asyncio.to_thread(browse.list_dir, root, p.path, p.offset, p.limit)
        return {"host": p.host, "snapshot": name, "path": p.path, **page}

    async def snapshots_history(self, p: SnapshotsHistory) -> dict:
        found = await asyncio.to_thread(browse.history, self.engine.known_host_dir(p.host), p.path)
        return {"host": p.host, "path": p.path, "entries": found}

    async def restore(self, p: Restore) -> dict:
        """Check everything that can be checked before starting: the snapshot, the
        path inside it, the destination and what is already there."""
        name, root = browse.snapshot_root(self.engine.known_host_dir(p.host), p.snapshot)
        await asyncio.to_thread(browse.lookup, root, p.path)
        relative = b"/".join(browse.components(p.path))
        remote = restore.check_destination(p.dest)
        if not remote and not p.overwrite:
            existing = await asyncio.to_thread(restore.local_conflict, p.dest, relative)
            if existing:
                raise RpcError(protocol.CONFLICT, f"{existing} exists; use --overwrite to replace it",
                               {"path": existing})
        params = {"snapshot": name, "root": str(root), "relative": os.fsdecode(relative), "dest": p.dest,
                  "overwrite": p.overwrite, "path": p.path}
        job_id = await self.engine.start_job([p.host], "restore", p.dry_run, params=params)
        return {"job_id": job_id}

    async def verify(self, p: Verify) -> dict:
        host_dir = self.engine.known_host_dir(p.host)
        if p.sample:
            result = await self.engine.verify_sample(p.host)
            return {**result, "ok": not result["mismatches"], "snapshots": [result["snapshot"]], "archives": []}
        if p.all:
            names = [str(n) for n in host_dir.snapshots()]
        else:
            names = [browse.snapshot_root(host_dir, p.snapshot)[0]]
        archive_files = [a.path for a in archive.archives(host_dir) if p.all or str(a.snapshot) in names]
        result = await asyncio.to_thread(manifest.verify_snapshots, host_dir.hourly, host_dir.meta,
                                         names, archive_files)
        log.log(40 if result["mismatches"] else 20, "verify.done", host=p.host, ok=result["ok"],
                checked=result["checked"], mismatches=len(result["mismatches"]))
        return {"host": p.host, **result}

    async def metrics(self, _: NoParams) -> dict:
        return {"text": await metrics.exposition(self.engine)}

    async def audit_list(self, p: AuditList) -> dict:
        store = self.engine.store
        chain_ok, broken_at = await store.verify_audit() if p.verify else (None, None)
        return {"entries": await store.audit_entries(p.limit), "chain_ok": chain_ok, "broken_at": broken_at}

    async def alerts_list(self, p: AlertsList) -> dict:
        return {"alerts": await self.engine.store.list_alerts(p.all)}

    async def alerts_ack(self, p: AlertsAck) -> dict:
        if not await self.engine.store.ack_alert(p.id):
            raise RpcError(protocol.NOT_FOUND, f"no unacknowledged alert {p.id}")
        return {"acked": p.id}

    async def prune(self, p: Prune) -> dict:
        hosts = self.engine.host_names(p.hosts)
        return {"dry_run": p.dry_run,
                "plan": {host: await self.engine.prune_host(host, p.dry_run) for host in hosts}}


    async def hosts_list(self, _: NoParams) -> dict:
        config = self.engine.config
        hosts = []
        for host in config.host:
            settings = config.settings(host)
            hosts.append({"name": host.name, "source": host.source, "remote": host.is_remote,
                          "schedule": settings.schedule.model_dump(mode="json"),
                          "excludes": len(settings.excludes)})
        return {"hosts": hosts}

    async def hosts_test(self, p: HostsTest) -> dict:
        return {"results": await self.engine.test_hosts(p.hosts)}

    async def config_reload(self, _: NoParams) -> dict:
        return await self.daemon.reload()

    async def events_subscribe(self, p: EventsSubscribe, conn) -> tuple[dict, Callable[[], None]]:
        bus = self.engine.bus
        topics = set(p.topics) if p.topics else None

        def on_drop() -> None:
            log.warning("events.subscriber_dropped", uid=conn.peer.uid, pid=conn.peer.pid,
                        max_queue=p.max_queue)
            conn.drop({"jsonrpc": "2.0", "method": "event",
                       "params": {"topic": "dropped", "time": clock.iso(clock.now()),
                                  "reason": f"too slow: more than {p.max_queue} events behind"}})

        subscription = bus.subscribe(topics, p.max_queue, on_drop)

        async def pump() -> None:
            while True:
                event = await subscription.queue.get()
                try:
                    await conn.send({"jsonrpc": "2.0", "method": "event", "params": event})
                except (ConnectionError, asyncio.TimeoutError):
                    bus.unsubscribe(subscription)
                    return

        def start() -> None:
            conn.limit_buffering(SUBSCRIBER_BUFFER)
            conn.stream(pump(), on_close=lambda: bus.unsubscribe(subscription))

        return {"subscribed": sorted(topics or TOPICS), "max_queue": p.max_queue}, start


def method_table(api: Api) -> dict[str, Method]:
    return {
        "daemon.info": Method(NoParams, api.daemon_info, "viewer"),
        "status": Method(NoParams, api.status, "viewer"),
        "job.start": Method(JobStart, api.job_start, "operator", mutating=True),
        "job.cancel": Method(JobCancel, api.job_cancel, "operator", mutating=True),
        "job.get": Method(JobGet, api.job_get, "viewer"),
        "jobs.list": Method(JobsList, api.jobs_list, "viewer"),
        "snapshots.list": Method(SnapshotsList, api.snapshots_list, "viewer"),
        "snapshots.browse": Method(SnapshotsBrowse, api.snapshots_browse, "admin"),
        "snapshots.history": Method(SnapshotsHistory, api.snapshots_history, "admin"),
        "schedule.list": Method(NoParams, api.schedule_list, "viewer"),
        "prune": Method(Prune, api.prune, "admin", mutating=True),
        "restore": Method(Restore, api.restore, "admin", mutating=True),
        "verify": Method(Verify, api.verify, "operator"),
        "alerts.list": Method(AlertsList, api.alerts_list, "viewer"),
        "alerts.ack": Method(AlertsAck, api.alerts_ack, "operator", mutating=True),
        "audit.list": Method(AuditList, api.audit_list, "admin"),
        "metrics": Method(NoParams, api.metrics, "viewer"),
        "hosts.list": Method(NoParams, api.hosts_list, "viewer"),
        "hosts.test": Method(HostsTest, api.hosts_test, "operator"),
        "config.reload": Method(NoParams, api.config_reload, "admin", mutating=True),
        "events.subscribe": Method(EventsSubscribe, api.events_subscribe, "viewer", streams=True),
    }
