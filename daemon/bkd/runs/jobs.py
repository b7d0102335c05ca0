"""Starting, cancelling and concluding jobs.

A job is claimed in the registry synchronously (the busy check and the
registration are one step), each host's run becomes a task, and when a task
ends — normally, cancelled (even before it started) or by a bug — its done
callback concludes the run in memory at once: the run's final event is
published whatever the database does. Recording, alerts and the read model
follow in the background."""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Awaitable, Callable

import structlog

from bkctl.protocol import BACKUP_KINDS, Kind, Status

from ..alerts.service import AlertKind, Alerts
from ..config.runtime import Runtime
from ..infra import clock
from ..infra.errors import InvalidArgument, NotFound
from ..pipeline import failures
from ..state.hosts import ReadModel
from .plan import Request, RestoreTarget, Trigger
from .recorder import Recorder
from .registry import Job, Registry, Run
from .worker import Worker

log = structlog.get_logger()


class Jobs:
    def __init__(self, runtime: Runtime, registry: Registry, worker: Worker, recorder: Recorder,
                 readmodel: ReadModel, alerts: Alerts, publish: Callable[..., None]):
        self.runtime = runtime
        self.registry = registry
        self.worker = worker
        self.recorder = recorder
        self.readmodel = readmodel
        self.alerts = alerts
        self.publish = publish
        self.on_finished: list[Callable[[Run], None]] = []  # e.g. wake the scheduler
        self.on_started: list[Callable[[Run], None]] = []  # e.g. the host's `/start` ping; must not block
        # Awaited once the run's record is saved, before a shutdown ends (e.g. the anomaly alerts).
        self.on_concluded: list[Callable[[Run], Awaitable[None]]] = []
        self._aftermath: set[asyncio.Task] = set()

    def host_names(self, requested: list[str] | None, allow_running: bool = False) -> list[str]:
        """The configured hosts asked for (all when none are named); unknown names are NotFound."""
        names = [h.name for h in self.runtime.config.host]
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
                latest = self.readmodel.facts_of(name).latest
                snapshot = str(latest) if latest else None
            if kind is Kind.RESTORE:
                snapshot = restore.snapshot
            requests.append(Request(name, kind, trigger, dry_run, restore, snapshot))
        job = self.registry.claim(kind, trigger, requests, dry_run)  # no await before this: atomic
        if job is None:
            return None
        now = clock.now()
        for run in job.runs.values():
            if kind in BACKUP_KINDS and not dry_run:
                self.readmodel.record(run.host).last_attempt = now
            elif kind in (Kind.ARCHIVE, Kind.MONTHLY):
                self.readmodel.record(run.host).heavy_attempt[kind] = now
            run.task = asyncio.create_task(self.worker.execute(run, self._changed), name=f"{run.host}:{job.job_id}")
            run.task.add_done_callback(functools.partial(self._task_done, run))
        log.info("job.start", job_id=job.job_id, kind=str(kind), hosts=sorted(job.runs), trigger=str(trigger),
                 dry_run=dry_run)
        self.publish("job", job_id=job.job_id, status=str(job.status), job=job.record(detail=False))
        await self.recorder.save(job)
        return job.job_id

    async def _changed(self, run: Run) -> None:
        """A run moved on (started, entered a stage): tell subscribers, record it."""
        if run.status is Status.RUNNING and run.stage is None:  # the worker's first word: the run started
            for callback in self.on_started:
                callback(run)
        self._publish_host(run)
        job = self.registry.jobs.get(run.job_id)
        if job is not None:
            await self.recorder.save(job)

    def _publish_host(self, run: Run) -> None:
        # Events reach every role: no detail.
        self.publish("host", job_id=run.job_id, kind=str(run.kind), **run.record(detail=False))

    def _task_done(self, run: Run, task: asyncio.Task) -> None:
        """Conclude run the moment its task ends, however it ended."""
        if task.cancelled():
            run.result = Status.INTERRUPTED if run.keep_partial else Status.CANCELLED
            run.error = f"{run.result} during {run.stage or 'queue'}"
            log.warning("run.stopped", host=run.host, job_id=run.job_id, status=str(run.result))
        elif task.exception() is not None:
            incident = uuid.uuid4().hex[:12]
            error = task.exception()
            log.error("run.internal_error", host=run.host, job_id=run.job_id, incident=incident,
                      exc_info=(type(error), error, error.__traceback__))
            run.result = Status.FAILED
            run.error = run.detail = f"internal error (incident {incident}; see the daemon's log)"
        self.worker.forget(run)  # also a restore's receiver, even one cancelled before it started
        self.registry.release_all(run)
        run.status, run.finished, run.progress = run.result, run.finished or clock.now(), None
        log.info("run.done", host=run.host, job_id=run.job_id, status=str(run.status), snapshot=run.snapshot,
                 **({"error": run.detail} if run.detail else {}))
        self._publish_host(run)
        job = self.registry.jobs[run.job_id]
        if all(r.final for r in job.runs.values()):
            job.finished = clock.now()
            self.publish("job", job_id=job.job_id, status=str(job.status), job=job.record(detail=False))
        self._remember(run)
        for callback in self.on_finished:
            callback(run)
        aftermath = asyncio.create_task(self._after(run, job))
        self._aftermath.add(aftermath)
        aftermath.add_done_callback(self._aftermath.discard)

    def _remember(self, run: Run) -> None:
        """The read model's view of the host's last result (backup runs only)."""
        if run.kind not in BACKUP_KINDS or run.request.dry_run:
            return
        record = self.readmodel.record(run.host)
        record.last_status, record.last_error, record.last_finished = str(run.status), run.error, run.finished
        if run.status is Status.FAILED:
            record.consecutive_failures += 1
        elif run.status in (Status.OK, Status.WARNING):
            record.consecutive_failures = 0

    async def _after(self, run: Run, job: Job) -> None:
        """What follows a run's end and may wait for the database."""
        await self.recorder.save(job)
        for listener in self.on_concluded:
            try:
                await listener(run)
            except Exception:  # a listener's failure must not cost the run's alerts
                log.exception("run.listener_failed", host=run.host, job_id=run.job_id)
        if run.request.dry_run or run.kind is Kind.RESTORE:
            return
        subject = None if run.kind in BACKUP_KINDS else str(run.kind)
        refusal = run.refusal if run.status is Status.FAILED else None
        if refusal and subject is None:
            # A refused login or host key needs a person: `auth` at once, instead of run_failed.
            await self.alerts.raise_(AlertKind.AUTH, run.host, failures.auth_message(refusal))
        elif run.status is Status.FAILED:
            streak = self.readmodel.record(run.host).consecutive_failures if subject is None else 1
            threshold = self.runtime.config.alerts.failures_before_alert if subject is None else 1
            if streak >= threshold:
                what = f"{run.kind} run failed" + (f" ({streak} in a row)" if streak > 1 else "")
                await self.alerts.raise_(AlertKind.RUN_FAILED, run.host, f"{what}: {run.error}", subject,
                                         count=streak if subject is None else None)
        elif run.status in (Status.OK, Status.WARNING):
            await self.alerts.resolve(AlertKind.RUN_FAILED, run.host, subject)
            if subject is None:
                await self.alerts.resolve(AlertKind.AUTH, run.host)

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
        while self._aftermath:
            await asyncio.gather(*list(self._aftermath), return_exceptions=True)
        await self.recorder.flush()
