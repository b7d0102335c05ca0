"""A run's life, told in one place. `Jobs` and `Worker` both call down into
it, never each other back:

- launch: a claimed job's runs become tasks (the `job` event, the record);
- started: a run left the queue with its plan (the `host` event, the record);
- stage: a run is in a stage (as above; a progress value still waiting when
  it ends is dropped, not sent late);
- progress: at most PROGRESS_EVERY apart per run, the newest value kept;
- concluded: the run's task ended — normally, cancelled (even before it
  started) or by a bug. Its done callback concludes the run in memory at
  once (status, finish time, lanes and receiver let go, the host's records,
  the `host` and, for the job's last run, the `job` event), whatever the
  database does; then, in the background, the record is written (retried
  until the store takes it) and the listeners that wait for it run.

Listeners above this layer register at build: `on_started(run)` and
`on_concluded(run)` are called at once (they must not block), and
`on_recorded(run)` is awaited once the run's record is written. A
listener's failure is logged and costs nothing else."""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager

import structlog

from bkctl.protocol import Status

from ..infra import clock
from ..restore.receivers import Receivers
from ..state.hosts import Fleet
from .plan import Stage
from .recorder import Recorder
from .registry import Job, Registry, Run

log = structlog.get_logger()

PROGRESS_EVERY = 0.5  # seconds between progress events of one run: at most two a second


class Lifecycle:
    def __init__(self, registry: Registry, recorder: Recorder, fleet: Fleet, receivers: Receivers,
                 publish: Callable[..., None]):
        self.registry = registry
        self.recorder = recorder
        self.fleet = fleet
        self.receivers = receivers
        self.publish = publish
        self.on_started: list[Callable[[Run], None]] = []  # e.g. the host's `/start` ping; must not block
        self.on_concluded: list[Callable[[Run], None]] = []  # e.g. wake-ups, the host's end ping
        self.on_recorded: list[Callable[[Run], Awaitable[None]]] = []  # e.g. the alert rules
        self._aftermath: set[asyncio.Task] = set()

    # ---- told by Jobs -------------------------------------------------------------

    async def launch(self, job: Job, execute: Callable[[Run], Coroutine]) -> None:
        """Each run of a claimed job becomes a task running execute(run), at
        once (no await since the claim): a cancel finds it the moment the
        claim returned. Then the job's event and its first record."""
        now = clock.now()
        for run in job.runs.values():
            self.fleet.record(run.host).attempted(run.kind, run.request.dry_run, now)
            run.task = asyncio.create_task(execute(run), name=f"{run.host}:{job.job_id}")
            run.task.add_done_callback(functools.partial(self._ended, run))
        log.info("job.start", job_id=job.job_id, kind=str(job.kind), hosts=sorted(job.runs),
                 trigger=str(job.trigger), dry_run=job.dry_run)
        self.publish("job", job_id=job.job_id, status=str(job.status), job=job.record(detail=False))
        await self.recorder.save(job)

    async def settle(self) -> None:
        """Until what follows the runs that ended (records, listeners) is done."""
        while self._aftermath:
            await asyncio.gather(*list(self._aftermath), return_exceptions=True)

    # ---- told by Worker -----------------------------------------------------------

    async def started(self, run: Run) -> None:
        """The run left the queue: it has its plan, status running."""
        for listener in self.on_started:
            self._call(listener, run)
        await self._moved(run)

    @asynccontextmanager
    async def stage(self, run: Run, stage: Stage):
        """The run is in stage for as long as this lasts."""
        run.stage, run.progress = stage, None
        await self._moved(run)
        try:
            yield
        finally:
            self._drop_progress(run)

    def progress(self, run: Run, progress: dict) -> None:
        run.progress = progress
        wait = run.progress_published + PROGRESS_EVERY - time.monotonic()
        if wait <= 0:
            self._publish_progress(run)
        elif run.progress_timer is None:  # the newest value goes out when its turn comes
            run.progress_timer = asyncio.get_running_loop().call_later(wait, self._publish_progress, run)

    # ---- within ---------------------------------------------------------------------

    async def _moved(self, run: Run) -> None:
        self._publish_host(run)
        job = self.registry.jobs.get(run.job_id)
        if job is not None:
            await self.recorder.save(job)

    def _publish_host(self, run: Run) -> None:
        # Events reach every role: no detail.
        self.publish("host", job_id=run.job_id, kind=str(run.kind), **run.record(detail=False))

    def _publish_progress(self, run: Run) -> None:
        run.progress_timer = None
        run.progress_published = time.monotonic()
        if run.progress is not None and not run.final:
            self.publish("progress", job_id=run.job_id, host=run.host, stage=run.stage and str(run.stage),
                         progress=run.progress)

    def _drop_progress(self, run: Run) -> None:
        """A progress value still waiting is dropped, not sent late."""
        if run.progress_timer is not None:
            run.progress_timer.cancel()
            run.progress_timer = None

    def _ended(self, run: Run, task: asyncio.Task) -> None:
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
        self._drop_progress(run)
        target = run.request.restore
        if target is not None and target.token is not None:
            self.receivers.forget(target.token)  # also one cancelled before it started
        self.registry.release_all(run)
        run.status, run.finished, run.progress = run.result, run.finished or clock.now(), None
        log.info("run.done", host=run.host, job_id=run.job_id, status=str(run.status), snapshot=run.snapshot,
                 **({"error": run.detail} if run.detail else {}))
        self._publish_host(run)
        job = self.registry.jobs[run.job_id]
        if all(r.final for r in job.runs.values()):
            job.finished = clock.now()
            self.publish("job", job_id=job.job_id, status=str(job.status), job=job.record(detail=False))
        self.fleet.record(run.host).concluded(run.kind, run.request.dry_run, run.status, run.error, run.finished)
        for listener in self.on_concluded:
            self._call(listener, run)
        aftermath = asyncio.create_task(self._after(job, run))
        self._aftermath.add(aftermath)
        aftermath.add_done_callback(self._aftermath.discard)

    async def _after(self, job: Job, run: Run) -> None:
        """What follows a run's end and may wait for the database: its record, then the listeners that wait."""
        await self.recorder.save(job)
        for listener in self.on_recorded:
            try:
                await listener(run)
            except Exception:
                log.exception("run.listener_failed", host=run.host, job_id=run.job_id)

    def _call(self, listener: Callable[[Run], None], run: Run) -> None:
        try:
            listener(run)
        except Exception:
            log.exception("run.listener_failed", host=run.host, job_id=run.job_id)
