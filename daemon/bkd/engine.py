"""Jobs: per-host work tasks, their limits and their records."""

from __future__ import annotations

import asyncio
import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import structlog

from bkctl import protocol
from . import clock
from . import exec as bkexec
from .clock import iso
from . import metrics
from .config import Config
from .errors import RpcError
from .events import EventBus
from .layout import HostDir, SnapshotName
from .pipeline import archive, hooks, manifest, restore, rsync
from .pipeline.prune import TrashCollector, host_plan, move_to_trash
from .pipeline.snapshot import RunControl, SnapshotFailed, take_snapshot
from .store import Store

log = structlog.get_logger()

PROGRESS_EVERY = 0.5  # seconds between progress events of one host

KINDS = ("snapshot", "archive", "monthly", "all")


@dataclass
class HostRun:
    """What a host is doing right now (kept in memory, mirrored to SQLite)."""

    job_id: int
    kind: str
    state: str = "queued"  # queued | running
    stage: str | None = None
    progress: dict | None = None
    control: RunControl = field(default_factory=RunControl)
    task: asyncio.Task | None = None
    progress_published: float = 0.0
    params: dict = field(default_factory=dict)  # what a restore restores


class Engine:
    def __init__(self, config: Config, store: Store, bus: EventBus | None = None):
        self.config = config
        self.store = store
        self.runs: dict[str, HostRun] = {}
        self.last_attempt: dict[str, datetime] = {}
        self.job_tasks: set[asyncio.Task] = set()
        self.changed = asyncio.Event()  # wakes the scheduler when work ends
        self._slots = asyncio.Semaphore(config.max_parallel_hosts)
        self.stopping = False
        self.collector = TrashCollector(config.backup_root)
        self.bus = bus or EventBus()
        self._unfinished: dict[int, int] = {}  # job id → hosts not yet finished

    def host_names(self, requested: list[str] | None) -> list[str]:
        names = [h.name for h in self.config.host]
        if not requested:
            return names
        unknown = [h for h in requested if h not in names]
        if unknown:
            raise RpcError(protocol.NOT_FOUND, f"unknown host: {', '.join(unknown)}",
                           {"hosts": unknown})
        return list(dict.fromkeys(requested))

    async def start_job(self, hosts: list[str] | None, kind: str = "snapshot", dry_run: bool = False,
                        trigger: str = "manual", params: dict | None = None) -> int | None:
        """Start kind on hosts. A manual trigger that finds a host busy is refused;
        a scheduled one leaves busy hosts out (coalesced). None: nothing to do."""
        if self.stopping:
            raise RpcError(protocol.SHUTTING_DOWN, "the daemon is shutting down")
        names = self.host_names(hosts)
        if not names:
            raise RpcError(protocol.NOT_FOUND, "no hosts are configured")
        busy = [h for h in names if h in self.runs]
        if busy and trigger == "manual":
            raise RpcError(protocol.BUSY, f"already running: {', '.join(busy)}",
                           {"hosts": busy, "job_ids": [self.runs[h].job_id for h in busy]})
        for host in busy:
            log.info("schedule.coalesced", host=host, kind=kind, running_job=self.runs[host].job_id)
        names = [h for h in names if h not in busy]
        if not names:
            return None
        job_id = await self.store.create_job(kind, names, trigger, dry_run)
        log.info("job.start", job_id=job_id, kind=kind, hosts=names, trigger=trigger, dry_run=dry_run)
        self.bus.publish("job", job_id=job_id, status="queued", job=await self.store.get_job(job_id))
        self._unfinished[job_id] = len(names)
        for host in names:
            if kind in ("snapshot", "all"):  # what the snapshot schedule counts from
                self.last_attempt[host] = clock.now()
            run = self.runs[host] = HostRun(job_id, kind, params=params or {})
            run.task = asyncio.create_task(self._run_host(host, run, dry_run), name=f"{host}:{job_id}")
            self.job_tasks.add(run.task)
            run.task.add_done_callback(self.job_tasks.discard)
        return job_id

    async def _run_host(self, host: str, run: HostRun, dry_run: bool) -> None:
        with structlog.contextvars.bound_contextvars(host=host, job_id=run.job_id):
            try:
                async with self._slots:
                    run.state = "running"
                    await self._update(host, run, status="running")
                    outcome = await self._pipeline(host, run, dry_run)
                if outcome["error"] and outcome["status"] == "failed":
                    log.error("run.failed", error=outcome["error"])
                log.info("run.done", status=outcome["status"], snapshot=outcome["snapshot"])
                await self._update(host, run, **outcome)
                if outcome["status"] == "failed":
                    await self.alert(host, "run_failed", f"job {run.job_id} ({run.kind}): {outcome['error']}")
            except asyncio.CancelledError:
                status = "interrupted" if run.control.keep_partial else "cancelled"
                log.warning("run.stopped", status=status)
                await self._update(host, run, status=status, error=f"{status} during {run.stage or 'queue'}")
            except Exception as e:  # a bug must fail this run, not the daemon
                log.exception("run.internal_error")
                await self._update(host, run, status="failed", error=f"internal error: {e}")
                await self.alert(host, "run_failed", f"job {run.job_id}: internal error: {e}")
            finally:
                del self.runs[host]
                self.changed.set()
                try:
                    await metrics.write_textfile(self)
                except OSError as e:
                    log.error("metrics.textfile_failed", error=str(e))

    def _stages(self, settings, kind: str, host_dir: HostDir, dry_run: bool) -> list[str]:
        """The stages of one run. A snapshot run adds the archive and monthly
        stages when they are due; --kind archive/monthly/all forces them."""
        if kind == "restore":
            return ["restore"]
        if dry_run:
            return ["snapshot"]
        now = clock.now()
        stages = ["snapshot", "prune"] if kind in ("snapshot", "all") else []
        if kind in ("archive", "all") or (
                kind == "snapshot" and settings.archive.enabled
                and archive.archive_due(host_dir, settings.schedule.archive_every, now)):
            stages.append("archive")
        if kind in ("monthly", "all") or (
                kind == "snapshot" and self.config.monthly.enabled
                and archive.monthly_due(host_dir, settings.schedule.monthly_day, now)):
            stages.append("monthly")
        return stages

    async def _pipeline(self, host: str, run: HostRun, dry_run: bool) -> dict:
        config = self.config
        settings = config.settings(config.find_host(host))
        host_dir = HostDir.of(config.backup_root, host)
        outcome = {"status": "ok", "snapshot": None, "stats": {}, "error": None}
        hooked = run.kind in ("snapshot", "all") and not dry_run
        hook_env = {"BKD_HOST": host, "BKD_JOB_ID": str(run.job_id), "BKD_SOURCE": settings.host.source}
        timeout = settings.host.hook_timeout.total_seconds()
        if hooked and settings.host.pre:
            await self._set_stage(host, run, "pre")
            try:
                await hooks.run_hook("pre", settings.host.pre, timeout, hook_env)
            except hooks.HookFailed as e:
                outcome.update(status="failed", error=str(e))
                return await self._post(host, run, settings, outcome, hook_env)
        outcome = await self._stages_of(host, run, settings, host_dir, dry_run, outcome)
        if hooked:
            outcome = await self._post(host, run, settings, outcome, hook_env)
        return outcome

    async def _post(self, host: str, run: HostRun, settings, outcome: dict, env: dict) -> dict:
        """The post hook sees the run's result; its own failure only adds a warning."""
        if not settings.host.post:
            return outcome
        await self._set_stage(host, run, "post")
        env = {**env, "BKD_STATUS": outcome["status"], "BKD_SNAPSHOT": outcome["snapshot"] or "",
               "BKD_ERROR": outcome["error"] or ""}
        try:
            await hooks.run_hook("post", settings.host.post, settings.host.hook_timeout.total_seconds(), env)
        except hooks.HookFailed as e:
            error = "; ".join(filter(None, [outcome["error"], str(e)]))
            status = "warning" if outcome["status"] == "ok" else outcome["status"]
            return {**outcome, "status": status, "error": error}
        return outcome

    async def _stages_of(self, host: str, run: HostRun, settings, host_dir: HostDir, dry_run: bool,
                         outcome: dict) -> dict:
        config = self.config
        for stage in self._stages(settings, run.kind, host_dir, dry_run):
            await self._set_stage(host, run, stage)
            try:
                if stage == "snapshot":
                    result = await self._snapshot(host, run, settings, host_dir, dry_run)
                    outcome.update(status=result.status, snapshot=result.name, error=result.warning)
                    outcome["stats"].update(result.stats)
                elif stage == "prune":  # only after a new snapshot exists, never before it
                    await self.prune_host(host, dry_run=False)
                elif stage == "restore":
                    p = run.params
                    argv = restore.restore_command(self.config, os.fsencode(p["relative"]), p["dest"],
                                                   overwrite=p["overwrite"], dry_run=dry_run)
                    outcome["stats"].update(await restore.run_restore(
                        argv, Path(p["root"]), lambda progress: self._progress(host, run, progress)))
                    outcome["snapshot"] = p["snapshot"]
                elif stage == "archive":
                    outcome["stats"].update(await archive.make_archive(host_dir, settings.archive))
                    archive.expire_archives(host_dir, settings.archive.keep_days, clock.now())
                elif stage == "monthly":
                    outcome["stats"].update(await archive.make_monthly(host_dir, clock.now()))
                    if archive.expire_monthly(host_dir, config.monthly.keep_months, clock.now()):
                        self.collector.wake.set()
            except (SnapshotFailed, archive.StageFailed, restore.RestoreFailed, OSError) as e:
                return {**outcome, "status": "failed", "error": f"{stage}: {e}"}
        return outcome

    async def _snapshot(self, host: str, run: HostRun, settings, host_dir: HostDir, dry_run: bool):
        previous = host_dir.latest_snapshot()
        previous_stats = (await self.store.snapshot_stats(host)).get(str(previous), {}) if previous else {}
        result = await take_snapshot(self.config, settings, dry_run=dry_run, control=run.control,
                                     previous_files=previous_stats.get("files"),
                                     on_progress=lambda progress: self._progress(host, run, progress))
        if result.name:
            name = SnapshotName.parse(result.name)
            await self.store.record_snapshot(host, result.name, iso(name.time), result.stats, run.job_id)
        if result.warning:
            log.warning("run.warning", warning=result.warning)
        return result

    async def _set_stage(self, host: str, run: HostRun, stage: str) -> None:
        run.stage, run.progress = stage, None
        await self._update(host, run, stage=stage)

    async def _update(self, host: str, run: HostRun, **fields) -> None:
        """Record a change of a host's run and tell the subscribers; when it
        finishes the job, they get the job's final record too."""
        await self.store.update_host(run.job_id, host, **fields)
        self.bus.publish("host", job_id=run.job_id, host=host,
                         **{"kind": run.kind, "stage": run.stage, "status": run.state, **fields})
        if fields.get("status") in protocol.FINAL_STATUSES:
            self._unfinished[run.job_id] -= 1
            if self._unfinished[run.job_id] == 0:  # counted, not read back: exactly once
                del self._unfinished[run.job_id]
                job = await self.store.get_job(run.job_id)
                self.bus.publish("job", job_id=run.job_id, status=job["status"], job=job)

    def _progress(self, host: str, run: HostRun, progress: dict) -> None:
        run.progress = progress
        now = time.monotonic()
        if now - run.progress_published >= PROGRESS_EVERY or progress["percent"] == 100:
            run.progress_published = now
            self.bus.publish("progress", job_id=run.job_id, host=host, stage=run.stage, progress=progress)

    async def prune_host(self, host: str, dry_run: bool) -> list[dict]:
        """Apply (or with dry_run, only explain) the host's retention policy."""
        settings = self.config.settings(self.config.find_host(host))
        host_dir = HostDir.of(self.config.backup_root, host)
        decisions = host_plan(host_dir, settings.retention, clock.now())
        if not dry_run:
            doomed = await asyncio.to_thread(move_to_trash, host_dir, decisions)
            if doomed:
                await self.store.forget_snapshots(host, doomed)
                log.info("prune.trashed", host=host, snapshots=doomed)
                self.collector.wake.set()
        return [d.as_dict() for d in decisions]

    async def test_hosts(self, hosts: list[str]) -> dict[str, dict]:
        """SSH and rsync reachability of each host, in parallel, writing nothing."""
        async def test(name: str) -> dict:
            settings = self.config.settings(self.config.find_host(name))
            started = time.monotonic()
            result = await bkexec.run(rsync.reachability_command(self.config, settings))
            seconds = round(time.monotonic() - started, 2)
            if result.returncode == 0:
                return {"ok": True, "error": None, "seconds": seconds}
            return {"ok": False, "error": rsync.describe_failure(result.returncode, result.stderr_tail),
                    "seconds": seconds}

        names = self.host_names(hosts)
        return dict(zip(names, await asyncio.gather(*(test(n) for n in names)), strict=True))

    def reconfigure(self, config: Config) -> None:
        """Use config from now on; running work keeps the settings it started with."""
        if config.max_parallel_hosts != self.config.max_parallel_hosts:
            self._slots = asyncio.Semaphore(config.max_parallel_hosts)
        self.config = config
        self.changed.set()

    async def cancel(self, hosts: list[str] | None = None, job_id: int | None = None) -> list[str]:
        """Stop the matching runs and wait for them to clean up (partials removed)."""
        if hosts:
            self.host_names(hosts)  # unknown names are an error, idle ones are not
        targets = {h: r for h, r in self.runs.items()
                   if (hosts and h in hosts) or (job_id is not None and r.job_id == job_id)}
        if job_id is not None and not targets and await self.store.get_job(job_id) is None:
            raise RpcError(protocol.NOT_FOUND, f"no job {job_id}")
        for host, run in targets.items():
            log.info("run.cancel", host=host, job_id=run.job_id)
            run.task.cancel()
        await asyncio.gather(*(r.task for r in targets.values()), return_exceptions=True)
        return sorted(targets)

    async def alert(self, host: str | None, kind: str, message: str) -> None:
        record = await self.store.add_alert(host, kind, message)
        log.warning("alert", alert_id=record["id"], kind=kind, message=message, **({"host": host} if host else {}))
        self.bus.publish("alert", **record)

    async def verify_sample(self, host: str) -> dict:
        """The background pass for one host: a sample of the latest snapshot's
        files, least recently verified first, re-hashed at idle I/O priority."""
        host_dir = HostDir.of(self.config.backup_root, host)
        latest = host_dir.latest_snapshot()
        recorded = manifest.read(host_dir.manifest_file(latest)) if latest else None
        if not recorded:
            return {"host": host, "snapshot": str(latest) if latest else None, "checked": 0, "mismatches": []}
        count = max(1, math.ceil(len(recorded) * self.config.verify.sample_percent / 100))
        paths = await self.store.least_recently_verified(host, list(recorded), count)
        mismatches = await _in_own_thread(manifest.hash_sample_idle, host_dir.hourly / str(latest), recorded, paths)
        await self.store.mark_verified(host, paths)
        for problem in mismatches:
            await self.alert(host, "integrity", f"{latest}:{problem['path']} is {problem['problem']} "
                                               "(its checksum no longer matches the manifest)")
        return {"host": host, "snapshot": str(latest), "checked": len(paths), "mismatches": mismatches}

    async def run_sampler(self) -> None:
        """Every verify.every, a sample of each host (never during the first minutes after start)."""
        while True:
            await asyncio.sleep(self.config.verify.every.total_seconds())
            for host in [h.name for h in self.config.host]:
                try:
                    await self.verify_sample(host)
                except Exception:
                    log.exception("verify.sample_failed", host=host)

    async def shutdown(self) -> None:
        """Stop all running work, keeping partial snapshots for the next run to resume."""
        self.stopping = True
        for run in self.runs.values():
            run.control.keep_partial = True
            run.task.cancel()
        if self.job_tasks:
            await asyncio.gather(*self.job_tasks, return_exceptions=True)

    def known_host_dir(self, host: str) -> HostDir:
        """A configured host's directory, or one a removed host left behind."""
        host_dir = HostDir.of(self.config.backup_root, host)
        if not self.config.find_host(host) and not host_dir.root.is_dir():
            raise RpcError(protocol.NOT_FOUND, f"unknown host: {host}")
        return host_dir

    async def snapshot_list(self, host: str) -> list[dict]:
        """Complete snapshots on disk (the truth), with their recorded stats."""
        host_dir = self.known_host_dir(host)
        recorded = await self.store.snapshot_stats(host)
        host_config = self.config.find_host(host)
        policy = self.config.settings(host_config).retention if host_config else self.config.retention
        tiers = {d.snapshot: d.tier for d in host_plan(host_dir, policy, clock.now())}
        entries = []
        for name in host_dir.snapshots():
            stats = recorded.get(str(name))
            if stats is None:
                # The database lost it (restored, rebuilt): the meta/ record is the source.
                stats = _read_meta(host_dir, name)
                await self.store.record_snapshot(host, str(name), iso(name.time), stats, None)
            entries.append({
                "name": str(name), "time": iso(name.time), "tier": tiers.get(str(name)),
                "files": stats.get("files"), "bytes": stats.get("bytes"),
                "changed_files": stats.get("changed_files"),
                "deleted_files": stats.get("deleted_files"),
                "transferred_bytes": stats.get("transferred_bytes"),
                "duration_s": stats.get("duration_s"),
            })
        return entries


def _read_meta(host_dir: HostDir, name: SnapshotName) -> dict:
    try:
        record = json.loads(host_dir.meta_file(name).read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in record.items() if k not in ("name", "time")}


async def _in_own_thread(func, *args):
    """Run func on a thread of its own (not the shared pool), for work that
    changes per-thread settings such as the I/O priority."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def settle(result, error) -> None:
        if not done.done():
            done.set_exception(error) if error else done.set_result(result)

    def target():
        try:
            result = func(*args)
        except BaseException as error:  # handed to the waiting coroutine
            loop.call_soon_threadsafe(settle, None, error)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=target, daemon=True, name="idle-io").start()
    return await done
