"""Runs in memory: the registry that decides "busy", the jobs they belong to,
and the concurrency limits they wait on (one per lane, sized by the config).

The registry is the one place that knows what is running. Claiming a host
checks busy and registers the run in the same synchronous call (no `await`
in between), so two requests in the same instant cannot both win, and a
cancel finds a run the moment `job.start` has answered."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from bkctl.protocol import FINAL_STATUSES, Kind, Status

from ..config.models import Config
from ..config.runtime import Runtime
from ..infra import clock
from ..infra.errors import Busy, ShuttingDown
from ..state.jobs import SUMMARY
from .plan import LANES, Lane, Request, RunPlan, Stage, Trigger

log = structlog.get_logger()


@dataclass
class Run:
    """One host's part of a job."""

    job_id: int
    request: Request
    status: Status = Status.QUEUED
    result: Status = Status.OK  # the outcome so far, while status is running
    stage: Stage | None = None
    progress: dict | None = None
    started: datetime | None = None
    finished: datetime | None = None
    snapshot: str | None = None
    stats: dict = field(default_factory=dict)
    error: str | None = None  # what went wrong, fit for every role (no file names, no command output)
    detail: str | None = None  # the full message (may quote file names): admins only
    refusal: str | None = None  # the local ssh client reported a refused login or host key (an `auth` alert)
    listing: list[str] | None = None  # a dry-run restore's file names: admins only
    keep_partial: bool = False  # set by a shutdown: the next run resumes from the partial
    plan: RunPlan | None = None
    task: asyncio.Task | None = None
    lanes: tuple[Lane, ...] = ()  # the lanes it still holds
    progress_published: float = 0.0  # monotonic time of the last progress event
    progress_timer: asyncio.TimerHandle | None = None

    @property
    def host(self) -> str:
        return self.request.host

    @property
    def kind(self) -> Kind:
        return self.request.kind

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    def record(self, detail: bool = True) -> dict:
        """detail=False: what every role may see (no file names, no command output)."""
        record = {"host": self.host, "status": str(self.status), "stage": self.stage and str(self.stage),
                "started": clock.iso_ms(self.started), "finished": clock.iso_ms(self.finished),
                "snapshot": self.snapshot, "stats": self.stats or None, "error": self.error}
        if detail:
            record["detail"] = self.detail
            if self.listing is not None:
                record["listing"] = self.listing
        return record


def job_status(statuses: list[Status]) -> Status:
    """A job's status from its hosts': the worst outcome wins."""
    for status in (Status.RUNNING, Status.QUEUED, Status.INTERRUPTED, Status.FAILED, Status.CANCELLED,
                   Status.WARNING, Status.OK):
        if status in statuses:
            return status
    return Status.SKIPPED


@dataclass
class Job:
    job_id: int
    kind: Kind
    trigger: Trigger
    dry_run: bool
    started: datetime
    runs: dict[str, Run]
    finished: datetime | None = None

    @property
    def status(self) -> Status:
        return job_status([run.status for run in self.runs.values()])

    def record(self, detail: bool = True) -> dict:
        return {"job_id": self.job_id, "kind": str(self.kind), "status": str(self.status),
                "trigger": str(self.trigger), "dry_run": self.dry_run, "started": clock.iso_ms(self.started),
                "finished": clock.iso_ms(self.finished),
                "hosts": [self.runs[host].record(detail) for host in sorted(self.runs)]}

    def summary(self, host: str | None = None) -> dict:
        """As jobs.list shows it: each run's outcome (only host's, when given)."""
        record = self.record(detail=False)
        record["hosts"] = [{k: run[k] for k in SUMMARY} for run in record["hosts"] if host in (None, run["host"])]
        return record


class Registry:
    """What runs now. Job ids are handed out here, in memory, so that a job
    exists (and can be cancelled) before the database has heard of it."""

    def __init__(self, next_job_id: int):
        self._next_job_id = next_job_id
        self.jobs: dict[int, Job] = {}  # unfinished jobs, and finished ones not yet stored
        self._busy: dict[tuple[str, Lane], Run] = {}
        self.stopping = False

    def busy_run(self, host: str, lane: Lane) -> Run | None:
        return self._busy.get((host, lane))

    def claim(self, kind: Kind, trigger: Trigger, requests: list[Request], dry_run: bool = False) -> Job | None:
        """Register a job for requests (one per host) if none of them is busy.
        A manual trigger that finds a host busy is refused (Busy); a scheduled
        one leaves busy hosts out (coalesced) and returns None if none is left.
        Synchronous: the check and the registration are one step."""
        if self.stopping:
            raise ShuttingDown("the daemon is shutting down")
        lanes = LANES[kind]
        busy = {r.host: run for r in requests for lane in lanes if (run := self._busy.get((r.host, lane)))}
        if busy and trigger is Trigger.MANUAL:
            raise Busy(f"already running: {', '.join(sorted(busy))}",
                       {"hosts": sorted(busy), "job_ids": sorted({run.job_id for run in busy.values()})})
        requests = [r for r in requests if r.host not in busy]
        if not requests:
            return None
        job = Job(self._next_job_id, kind, trigger, dry_run, clock.now(),
                  {r.host: Run(self._next_job_id, r, lanes=lanes) for r in requests})
        self._next_job_id += 1
        for run in job.runs.values():
            for lane in lanes:
                self._busy[(run.host, lane)] = run
        self.jobs[job.job_id] = job
        return job

    def release(self, run: Run, lane: Lane) -> None:
        """run no longer holds lane (a kind `all` run frees the snapshot lane
        as soon as its snapshot is done, so the next snapshot need not wait)."""
        if self._busy.get((run.host, lane)) is run:
            del self._busy[(run.host, lane)]
        run.lanes = tuple(held for held in run.lanes if held is not lane)

    def release_all(self, run: Run) -> None:
        for lane in run.lanes:
            self.release(run, lane)

    def runs(self) -> list[Run]:
        """Every run not yet finished."""
        return [run for job in self.jobs.values() for run in job.runs.values() if not run.final]

    def find(self, hosts: list[str] | None = None, job_id: int | None = None) -> list[Run]:
        return [run for run in self.runs()
                if (hosts and run.host in hosts) or (job_id is not None and run.job_id == job_id)]

    def pinned(self, host: str) -> set[str]:
        """Complete snapshots that unfinished work of host reads: retention leaves them alone."""
        return {run.request.snapshot for run in self.runs()
                if run.host == host and run.request.snapshot}

    def forget(self, job_id: int) -> None:
        """A finished job that the database holds: memory need not keep it."""
        job = self.jobs.get(job_id)
        if job and all(run.final for run in job.runs.values()):
            del self.jobs[job_id]


class Limit:
    """At most `size` holders at once: a counter and a queue of waiters, FIFO.
    The size can change at any time (reload): a lower one lets nothing new in
    until enough holders have left; nothing running is disturbed."""

    def __init__(self, size: int):
        self.size = size
        self.in_use = 0
        self._waiters: deque[asyncio.Future] = deque()

    async def acquire(self) -> None:
        if self.in_use < self.size and not self._waiters:
            self.in_use += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # when it resolves, the slot is already ours
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted and cancelled in the same instant: give it back
            elif waiter in self._waiters:  # a release in the same instant may have passed it over
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        self.in_use -= 1
        self._grant()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc) -> None:
        self.release()

    def resize(self, size: int) -> None:
        self.size = size
        self._grant()

    @property
    def waiting(self) -> int:
        return sum(not w.done() for w in self._waiters)

    def _grant(self) -> None:
        while self._waiters and self.in_use < self.size:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_use += 1
                waiter.set_result(None)


class Limits(Mapping):
    """Each lane's Limit (None: not limited, as restores), sized by the
    config; a reload resizes them, disturbing nothing that runs."""

    def __init__(self, runtime: Runtime):
        config = runtime.config
        self._lanes: dict[Lane, Limit | None] = {Lane.SNAPSHOT: Limit(config.max_parallel_hosts),
                                                 Lane.HEAVY: Limit(config.max_parallel_heavy), Lane.RESTORE: None}
        runtime.on_reload(self._reloaded)

    def __getitem__(self, lane: Lane) -> Limit | None:
        return self._lanes[lane]

    def __iter__(self):
        return iter(self._lanes)

    def __len__(self) -> int:
        return len(self._lanes)

    def _reloaded(self, old: Config, new: Config) -> None:
        self._lanes[Lane.SNAPSHOT].resize(new.max_parallel_hosts)
        self._lanes[Lane.HEAVY].resize(new.max_parallel_heavy)
        log.info("limits.set", snapshot=new.max_parallel_hosts, heavy=new.max_parallel_heavy)
