"""Starting, cancelling and listing jobs.

A job is claimed in the registry synchronously (the busy check and the
registration are one step); the run lifecycle (lifecycle.py) turns each
host's run into a task running Worker.execute and concludes it when the
task ends. The job history is memory over the store."""

from __future__ import annotations

import asyncio

import structlog

from bkctl.protocol import BACKUP_KINDS, Kind

from ..config.runtime import Runtime
from ..infra.errors import InvalidArgument, NotFound
from ..restore.request import RestoreTarget
from ..state.hosts import Fleet
from .lifecycle import Lifecycle
from .plan import Request, Trigger
from .recorder import Recorder
from .registry import Registry
from .worker import Worker

log = structlog.get_logger()


class Jobs:
    def __init__(self, runtime: Runtime, registry: Registry, lifecycle: Lifecycle, worker: Worker,
                 recorder: Recorder, fleet: Fleet):
        self.runtime = runtime
        self.registry = registry
        self.lifecycle = lifecycle
        self.worker = worker
        self.recorder = recorder
        self.fleet = fleet

    def host_names(self, requested: list[str] | None, allow_running: bool = False) -> list[str]:
        """The configured hosts asked for (all when none are named); unknown names are NotFound."""
        names = list(self.runtime.config.hosts)
        if not requested:
            return names
        known = set(names) | ({run.host for run in self.registry.runs()} if allow_running else set())
        unknown = [h for h in requested if h not in known]
        if unknown:
            raise NotFound(f"unknown host: {', '.join(unknown)}", {"hosts": unknown})
        return list(dict.fromkeys(requested))

    async def start(self, hosts: list[str] | None, kind: Kind, trigger: Trigger, *, dry_run: bool = False,
                    restore: RestoreTarget | None = None, snapshots: dict[str, str | None] | None = None) -> int | None:
        """Start kind on hosts; the job id, or None when a scheduled trigger found
        every host busy. Heavy work reads the given snapshot of each host (the
        newest complete one when not given)."""
        if dry_run and kind not in (*BACKUP_KINDS, Kind.RESTORE):
            raise InvalidArgument("invalid params: dry_run: archives and monthly copies have no dry run")
        names = self.host_names(hosts)
        if not names:
            raise NotFound("no hosts are configured")
        snapshots = snapshots or {}
        requests = []
        for name in names:
            snapshot = snapshots.get(name)
            if kind in (Kind.ARCHIVE, Kind.MONTHLY) and snapshot is None:
                latest = self.fleet.facts_of(name).latest
                snapshot = str(latest) if latest else None
            if kind is Kind.RESTORE:
                snapshot = restore.snapshot
            requests.append(Request(name, kind, trigger, dry_run, restore, snapshot))
        job = self.registry.claim(kind, trigger, requests, dry_run)  # no await before this: atomic
        if job is None:
            return None
        await self.lifecycle.launch(job, self.worker.execute)
        return job.job_id

    async def cancel(self, hosts: list[str] | None = None, job_id: int | None = None) -> list[str]:
        """Stop the matching runs and wait until they have cleaned up (partials removed)."""
        if hosts:
            self.host_names(hosts, allow_running=True)
        targets = self.registry.find(hosts, job_id)
        if job_id is not None and not targets and await self.get(job_id) is None:
            raise NotFound(f"no job {job_id}")
        for run in targets:
            log.info("run.cancel", host=run.host, job_id=run.job_id)
            run.keep_partial = False
            run.task.cancel()
        if targets:
            await asyncio.wait([run.task for run in targets])
        return sorted({run.host for run in targets})

    async def get(self, job_id: int) -> dict | None:
        job = self.registry.jobs.get(job_id)
        if job is not None:
            return job.record()
        return await self.recorder.store.jobs.get(job_id)

    async def list(self, host: str | None, limit: int, before: int | None = None) -> list[dict]:
        """Job summaries, newest first, older than job `before`: what memory
        holds (running, or not yet stored) over what the store holds."""
        live = {job_id: job.summary(host) for job_id, job in self.registry.jobs.items()
                if (host is None or host in job.runs) and (before is None or job_id < before)}
        stored = await self.recorder.store.jobs.page(host, limit, before)
        merged = {job["job_id"]: job for job in stored} | live
        return [merged[job_id] for job_id in sorted(merged, reverse=True)[:limit]]

    async def shutdown(self) -> None:
        """Stop all running work, keeping partial snapshots for the next run to resume."""
        self.registry.stopping = True
        runs = self.registry.runs()
        for run in runs:
            run.keep_partial = True
            run.task.cancel()
        if runs:
            await asyncio.wait([run.task for run in runs])
        await self.lifecycle.settle()
        await self.recorder.flush()
