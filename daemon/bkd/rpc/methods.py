"""THE method table: every RPC method, its params and its handler, in one place.

Dispatch looks names up here and nowhere else (no getattr on request data)."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bkctl import protocol
from .. import __version__, clock
from ..engine import KINDS, RpcError
from ..layout import HostDir
from ..scheduler import next_runs, schedule_entries

if TYPE_CHECKING:
    from ..app import Daemon


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


class Prune(Params):
    hosts: Optional[list[str]] = None
    dry_run: bool = False


@dataclass(frozen=True)
class Method:
    params: type[Params]
    handler: Callable[[Params], Awaitable[dict]]
    role: Literal["viewer", "operator", "admin"]


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
        return {"job_running": bool(engine.runs), "hosts": hosts,
                "deletion_queue": engine.collector.pending()}

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

    async def prune(self, p: Prune) -> dict:
        hosts = self.engine.host_names(p.hosts)
        return {"dry_run": p.dry_run,
                "plan": {host: await self.engine.prune_host(host, p.dry_run) for host in hosts}}


def method_table(api: Api) -> dict[str, Method]:
    return {
        "daemon.info": Method(NoParams, api.daemon_info, "viewer"),
        "status": Method(NoParams, api.status, "viewer"),
        "job.start": Method(JobStart, api.job_start, "operator"),
        "job.cancel": Method(JobCancel, api.job_cancel, "operator"),
        "job.get": Method(JobGet, api.job_get, "viewer"),
        "jobs.list": Method(JobsList, api.jobs_list, "viewer"),
        "snapshots.list": Method(SnapshotsList, api.snapshots_list, "viewer"),
        "schedule.list": Method(NoParams, api.schedule_list, "viewer"),
        "prune": Method(Prune, api.prune, "admin"),
    }
