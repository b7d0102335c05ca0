"""Executing one run: wait for a slot of its lane, plan it from the config of
that moment, run its stages, and leave the outcome on the run.

Everything a stage needs comes from the frozen plan; nothing here reads the
live config after planning."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import nullcontext
from pathlib import Path

import structlog

from bkctl.protocol import Kind, Status

from ..config.runtime import Runtime
from ..infra import clock
from ..infra.errors import NotFound
from ..pipeline import archive, hooks, manifest, rsync
from ..pipeline.outcomes import clip, public_error, public_warning
from ..pipeline.selfguard import SelfGuard, effective_excludes
from ..pipeline.snapshot import SnapshotFailed, take_snapshot
from ..pipeline.versions.service import Versions
from ..replica import pull
from ..restore import source as restore_source, transfer
from ..restore.receivers import ATTACH_TIMEOUT, Receivers
from ..state.hosts import Fleet
from ..state.store import STORE_ERRORS, Store
from ..tree import browse, copies
from ..tree.layout import HostDir, SnapshotName
from .housekeeping import Housekeeping
from .lifecycle import PROGRESS_EVERY, Lifecycle
from .plan import Lane, Phase, Stage, plan_run
from .registry import Limit, Registry, Run

log = structlog.get_logger()

# What a stage may fail with: the run fails with the message; anything else is a bug.
STAGE_ERRORS = (SnapshotFailed, archive.StageFailed, transfer.RestoreFailed, hooks.HookFailed, OSError)


class Worker:
    def __init__(self, runtime: Runtime, registry: Registry, limits: Mapping[Lane, Limit | None],
                 lifecycle: Lifecycle, housekeeping: Housekeeping, store: Store, fleet: Fleet,
                 receivers: Receivers, guard: SelfGuard, versions: Versions):
        self.runtime = runtime
        self.registry = registry
        self.limits = limits  # None: that lane is not limited (restores)
        self.lifecycle = lifecycle
        self.housekeeping = housekeeping
        self.store = store
        self.fleet = fleet
        self.receivers = receivers
        self.guard = guard
        self.versions = versions
        self.versions = versions
        self._stages: dict[Stage, Callable[[Run], Awaitable[None]]] = {
            Stage.PRE: self._pre, Stage.SNAPSHOT: self._snapshot, Stage.REPLICATE: self._replicate,
            Stage.PRUNE: self._prune,
            Stage.POST: self._post, Stage.ARCHIVE: self._archive, Stage.MONTHLY: self._monthly,
            Stage.RESTORE: self._restore,
        }

    async def execute(self, run: Run) -> None:
        """Run to its outcome (run.status stays running; the lifecycle concludes it)."""
        with structlog.contextvars.bound_contextvars(host=run.host, job_id=run.job_id):
            lane = run.lanes[0]
            async with _slot(self.limits[lane], run):
                plan = plan_run(run.job_id, run.request, self.runtime.config)
                if plan is None:
                    run.result = Status.SKIPPED
                    run.error = "the host was removed from the config before the run started"
                    log.info("run.skipped", reason=run.error)
                    return
                run.plan = plan
                run.status, run.started = Status.RUNNING, clock.now()
                log.info("run.start", kind=str(run.kind), stages=[str(s) for s in plan.stages],
                         trigger=str(run.request.trigger), dry_run=run.request.dry_run)
                await self.lifecycle.started(run)
                await self._phase(run, plan.phases[0])
            for phase in plan.phases[1:]:
                # The snapshot is done: the host's next snapshot need not wait for the heavy work.
                self.registry.release(run, lane)
                lane = phase.lane
                if run.result is Status.FAILED:
                    break
                async with _slot(self.limits[lane], run):
                    await self._phase(run, phase)

    async def _phase(self, run: Run, phase: Phase) -> None:
        for stage in phase.stages:
            if run.result is Status.FAILED and stage is not Stage.POST:
                continue  # after a failure only the post hook runs (it gets the result)
            async with self.lifecycle.stage(run, stage):
                try:
                    await self._stages[stage](run)
                except STAGE_ERRORS as e:
                    message = _message(stage, e)
                    if stage is Stage.POST and run.result is not Status.FAILED:
                        run.result = Status.WARNING  # the backup itself is fine
                    else:
                        run.result = Status.FAILED
                        run.refusal = run.refusal or getattr(e, "refusal", None)
                    # error: the category, for every role; detail: the whole message, for admins.
                    run.detail = clip("; ".join(filter(None, [run.detail, message])))
                    run.error = "; ".join(filter(None, [run.error, public_error(str(stage), e)]))
                    log.error("stage.failed", stage=str(stage), error=message)

    # ---- the stages -------------------------------------------------------------

    def _hook_env(self, run: Run) -> dict[str, str]:
        settings = run.plan.settings
        return {"BKD_HOST": run.host, "BKD_JOB_ID": str(run.job_id), "BKD_SOURCE": settings.host.source}

    async def _pre(self, run: Run) -> None:
        host = run.plan.settings.host
        await hooks.run_hook("pre", host.pre, host.hook_timeout.total_seconds(), self._hook_env(run))

    async def _post(self, run: Run) -> None:
        host = run.plan.settings.host
        env = {**self._hook_env(run), "BKD_STATUS": str(run.result), "BKD_SNAPSHOT": run.snapshot or "",
               "BKD_ERROR": run.error or ""}
        await hooks.run_hook("post", host.post, host.hook_timeout.total_seconds(), env)

    async def _snapshot(self, run: Run) -> None:
        plan = run.plan
        host_dir = HostDir.of(plan.config.backup_root, run.host)
        previous = await asyncio.to_thread(host_dir.latest_snapshot)
        previous_files = None
        if previous:
            try:
                previous_files = ((await self.store.snapshots.stats_of(run.host, str(previous))) or {}).get("files")
            except STORE_ERRORS as e:
                log.warning("store.read_failed", error=str(e))
        settings = plan.settings
        own = await self.guard.own_inside(settings)  # bkd's own directories, when the source holds them
        if own:
            log.info("selfguard.excluded", paths=own)
            settings = settings.model_copy(update={"excludes": effective_excludes(settings, own)})
        with rsync.ssh_log_for(settings) or nullcontext() as ssh_log:
            result = await take_snapshot(plan.config, settings, dry_run=run.request.dry_run, control=run,
                                         previous_files=previous_files, ssh_log=ssh_log,
                                         on_progress=lambda progress: self.lifecycle.progress(run, progress))
        run.stats.update(result.stats)
        self._warn(run, result.warning if result.status == "warning" else None)
        if result.name:
            await self._made(run, result)

    async def _made(self, run: Run, result) -> None:
        """A snapshot is complete: the run names it; the host's facts, its version index and the database know it."""
        run.snapshot = result.name
        host_dir = HostDir.of(run.plan.config.backup_root, run.host)
        self.fleet.refresh(run.host)
        # The index step: the new snapshot's changes into the host's version index (None while it is rebuilt).
        result.stats["index_s"] = await self.versions.added(host_dir)
        result.stats["unique_bytes"] = self.versions.unique_bytes(run.host)  # the host's space after it
        run.stats.update(index_s=result.stats["index_s"], unique_bytes=result.stats["unique_bytes"])
        name = SnapshotName.parse(result.name)
        try:
            await self.store.snapshots.record(run.host, [(result.name, clock.iso(name.time),
                                                          {**result.stats, "examples": result.examples},
                                                          run.job_id)])
        except STORE_ERRORS as e:  # meta/ has the record; the database is rebuilt from it
            log.warning("store.snapshot_unrecorded", snapshot=result.name, error=str(e))

    @staticmethod
    def _warn(run: Run, warning: str | None) -> None:
        """The run completed, with something to look at: for every role its category, the whole for admins."""
        if warning:
            run.result = Status.WARNING
            run.error, run.detail = public_warning(warning), clip(warning)

    async def _replicate(self, run: Run) -> None:
        """A replicated host's snapshot: what is wanted of the primary's, pulled oldest first."""
        plan = run.plan
        replica, upstream = plan.upstream
        with rsync.ssh_log_for(plan.settings) or nullcontext() as ssh_log:
            outcome = await pull.replicate(plan.config, plan.settings, replica, upstream,
                                           dry_run=run.request.dry_run, control=run, ssh_log=ssh_log,
                                           on_progress=lambda progress: self.lifecycle.progress(run, progress),
                                           on_pulled=lambda result: self._made(run, result))
        if outcome.pulled:
            run.stats.update(outcome.pulled[-1].stats)
        run.stats.update(pulled=len(outcome.pulled), mismatched_files=sum(len(r.mismatches) for r in outcome.pulled))
        if run.request.dry_run:  # what a pull would bring: how many, and the oldest of them by name
            run.stats.update(wanted=len(outcome.wanted), wanted_names=outcome.wanted[:100])
        self._warn(run, outcome.warning)

    async def _prune(self, run: Run) -> None:
        await self.housekeeping.prune(HostDir.of(run.plan.config.backup_root, run.host), run.plan.settings.retention,
                                      dry_run=False)

    def _heavy_source(self, run: Run) -> str:
        """The complete snapshot heavy work reads: the one this run made (kind
        all), or the one pinned when the job was claimed."""
        name = run.snapshot if run.kind is Kind.ALL else run.request.snapshot
        if name is None:
            raise archive.StageFailed("no complete snapshot yet")
        return name

    async def _archive(self, run: Run) -> None:
        plan = run.plan
        host_dir = HostDir.of(plan.config.backup_root, run.host)
        await self.housekeeping.clear_heavy_leftovers(host_dir)
        stats = await archive.make_archive(host_dir, SnapshotName.parse(self._heavy_source(run)),
                                           plan.settings.archive)
        run.stats.update(stats)
        await asyncio.to_thread(archive.expire_archives, host_dir, plan.settings.archive.keep_days, clock.now())
        self.fleet.refresh(run.host)
        await self.versions.changed(host_dir)

    async def _monthly(self, run: Run) -> None:
        plan = run.plan
        host_dir = HostDir.of(plan.config.backup_root, run.host)
        await self.housekeeping.clear_heavy_leftovers(host_dir)
        stats = await archive.make_monthly(host_dir, SnapshotName.parse(self._heavy_source(run)), clock.now())
        run.stats.update(stats)
        await self.housekeeping.expire_monthly(host_dir, plan.config.monthly.keep_months)
        self.fleet.refresh(run.host)
        await self.versions.changed(host_dir)

    async def _restore(self, run: Run) -> None:
        plan, target = run.plan, run.request.restore
        host_dir = HostDir.of(plan.config.backup_root, run.host)
        try:
            copy = copies.resolve(host_dir, target.snapshot)
        except NotFound as e:
            raise transfer.RestoreFailed(f"{e.message}: it went after the restore was asked for") from None
        run.snapshot = target.snapshot
        dry_run = run.request.dry_run
        # A transfer without I/O for rsync.timeout fails (SPEC §7): transfer.push sets it.
        timeout = (plan.settings.rsync if plan.settings else plan.config.rsync).timeout.total_seconds()
        options = list(target.options)
        on_progress = self._restore_progress(run, copies.manifest_of(host_dir, copy), target.path)
        async with restore_source.sending_root(host_dir, copy, target.path,
                                               lambda progress: self.lifecycle.progress(run, progress)) as root:
            if target.token is None:  # host:path, written by the daemon's rsync over SSH
                rsync_path = transfer.rsync_path_at(plan.config, transfer.check_destination(target.dest), run.host)
                stats, names = await transfer.restore_remote(
                    plan.config, root, target.dest, list(target.sources), target.into, target.where, options,
                    dry_run, on_progress, timeout, rsync_path)
            else:  # a local DEST, received by the caller's bkctl
                stats, names = await transfer.restore_local(root, list(target.sources), target.missing, options,
                                                            self._attached(target.token, min(ATTACH_TIMEOUT, timeout)),
                                                            dry_run, on_progress, timeout)
        run.stats.update(stats)
        if dry_run:
            run.listing = names

    async def _attached(self, token: str, timeout: float):
        """The connection the caller's bkctl attached with (restore.stream)."""
        try:
            _reader, writer = await self.receivers.connection(token, timeout)
        except asyncio.TimeoutError:
            raise transfer.RestoreFailed(f"no receiver attached within {timeout:g} s: a local restore is received "
                                        "by the caller's bkctl (bkctl restore ... --to DEST)") from None
        return writer

    def _restore_progress(self, run: Run, manifest_file: Path | None, path: str) -> Callable[[int], None]:
        """Progress from the bytes the restore's rsync has written, against what
        PATH holds: read from the manifest only once the transfer has lasted
        long enough to report progress at all (a small restore never pays for it)."""
        started = time.monotonic()
        total: list[asyncio.Future] = []

        def on_progress(sent: int) -> None:
            elapsed = time.monotonic() - started
            if elapsed < PROGRESS_EVERY:
                return
            if not total:
                total.append(asyncio.ensure_future(asyncio.to_thread(
                    manifest.bytes_under, manifest_file, b"/".join(browse.components(path))) if manifest_file
                    else asyncio.sleep(0)))
                total[0].add_done_callback(lambda f: f.cancelled() or f.exception())  # None without a manifest
            whole = total[0].result() if total[0].done() and not total[0].exception() else None
            percent = min(99, sent * 100 // whole) if whole else None
            rate = sent / elapsed
            eta = round((whole - sent) / rate) if whole and rate and sent < whole else None
            self.lifecycle.progress(run, {"percent": percent, "bytes": sent, "rate": round(rate), "eta_s": eta})

        return on_progress


def _message(stage: Stage, error: Exception) -> str:
    if isinstance(error, OSError):
        where = f"{os.fsdecode(error.filename)}: " if error.filename else ""
        return f"{stage}: {where}{error.strerror or error}"
    text = str(error)
    return text if text.startswith(f"{stage}") else f"{stage}: {text}"


class _slot:
    """`async with` a lane's limit (or nothing for an unlimited lane). The run's
    finish time is taken as the slot is given back, so that no run can look
    as if it started while the one it replaced was still running."""

    def __init__(self, limit: Limit | None, run: Run):
        self.limit, self.run = limit, run

    async def __aenter__(self):
        if self.limit is not None:
            await self.limit.acquire()

    async def __aexit__(self, *exc):
        self.run.finished = clock.now()
        if self.limit is not None:
            self.limit.release()
