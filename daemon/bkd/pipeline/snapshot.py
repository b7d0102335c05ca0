"""One snapshot of one host: rsync into a staging directory, then make it
complete with a single rename (SPEC §4)."""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import structlog

from .. import exec as bkexec
from ..config.models import Config, HostSettings
from ..fsutil import fsync_dir, make_private_dir, replace_symlink, syncfs, write_atomic
from ..layout import PARTIAL_PREFIX, HostDir, SnapshotName
from . import rsync

log = structlog.get_logger()

MAX_LINK_DESTS = 20  # rsync's own limit


class SnapshotFailed(Exception):
    """The run failed; the previous snapshot is untouched and no partial is left."""


@dataclass
class SnapshotResult:
    status: str  # ok | warning
    name: str | None  # None for a dry run
    stats: dict
    warning: str | None = None


@dataclass
class RunControl:
    """Set by whoever stops a run, read by the run when it is cancelled: a
    shutdown keeps the partial snapshot for the next run to resume from, a
    user's cancel removes it."""

    keep_partial: bool = False
    stderr_lines: list[str] = field(default_factory=list)


def _deleted_files(previous_files: int | None, stats: dict) -> int:
    # --link-dest fills an empty directory, so rsync never reports deletions:
    # files that existed before = files now - files new to every link-dest.
    if previous_files is None:
        return 0
    kept = stats.get("files", 0) - stats.get("created_files", 0)
    return max(previous_files - kept, 0)


async def take_snapshot(config: Config, settings: HostSettings, *, dry_run: bool = False,
                        control: RunControl | None = None, previous_files: int | None = None,
                        on_progress: Callable[[dict], None] | None = None) -> SnapshotResult:
    control = control or RunControl()
    host_dir = HostDir.of(config.backup_root, settings.host.name)
    started = datetime.now(timezone.utc)
    previous = host_dir.latest_snapshot()
    interrupted = host_dir.partials()
    link_dests = ([host_dir.hourly / str(previous)] if previous else []) + interrupted
    link_dests = link_dests[:MAX_LINK_DESTS]
    staging = host_dir.hourly / f"{PARTIAL_PREFIX}{started.strftime('%Y-%m-%d_%H%M%S')}-{secrets.token_hex(3)}"

    if not dry_run:
        make_private_dir(config.backup_root)
        for directory in (host_dir.root, host_dir.hourly, host_dir.meta):
            make_private_dir(directory)
    argv = rsync.snapshot_command(config, settings, staging, link_dests, dry_run=dry_run)
    stdout: list[str] = []

    def on_stdout(line: str) -> None:
        progress = rsync.parse_progress(line)
        if progress is None:
            stdout.append(line)
        elif on_progress:
            on_progress(progress)

    log.info("snapshot.start", staging=staging.name, previous=str(previous) if previous else None,
             resume_from=[p.name for p in interrupted])
    t0 = time.monotonic()
    try:
        result = await bkexec.run(argv, on_stdout=on_stdout,
                                  on_stderr=control.stderr_lines.append)
    except asyncio.CancelledError:
        if not control.keep_partial:
            await _remove(staging)
        raise
    duration = time.monotonic() - t0

    if result.returncode not in rsync.SUCCESS_CODES:
        await _remove(staging)
        raise SnapshotFailed(rsync.describe_failure(result.returncode, result.stderr_tail))

    stats = rsync.parse_stats(stdout)
    stats["deleted_files"] = _deleted_files(previous_files, stats)
    stats["duration_s"] = round(duration, 3)
    warning = None
    if result.returncode == rsync.VANISHED:
        warning = rsync.describe_failure(result.returncode, result.stderr_tail)
    if dry_run:
        return SnapshotResult("warning" if warning else "ok", None, stats, warning)

    try:
        name = await asyncio.to_thread(_complete, host_dir, staging, started, stats, interrupted)
    except OSError as e:
        await _remove(staging)
        raise SnapshotFailed(f"cannot complete the snapshot: {e}") from e
    log.info("snapshot.complete", snapshot=str(name), **stats)
    return SnapshotResult("warning" if warning else "ok", str(name), stats, warning)


def _complete(host_dir: HostDir, staging: Path, started: datetime, stats: dict,
              interrupted: list[Path]) -> SnapshotName:
    """Staging → complete snapshot. The rename is the commit point: before it the
    tree is flushed to disk, after it `latest` is switched atomically."""
    name = host_dir.free_name(started)
    record = {"name": str(name), "time": name.time.isoformat(), **stats}
    meta_file = host_dir.meta_file(name)
    try:
        write_atomic(meta_file, json.dumps(record, indent=1).encode())
        syncfs(staging)
        staging.rename(host_dir.hourly / str(name))
    except OSError:
        meta_file.unlink(missing_ok=True)
        raise
    fsync_dir(host_dir.hourly)
    replace_symlink(host_dir.latest, f"hourly/{name}")
    # The interrupted runs' files now live on in this snapshot.
    for partial in interrupted:
        shutil.rmtree(partial, ignore_errors=True)
    return name


async def _remove(path: Path) -> None:
    await asyncio.to_thread(shutil.rmtree, path, ignore_errors=True)
