"""One snapshot of one host: rsync into a staging directory, then make it
complete with a single rename (SPEC §4)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import structlog

from .. import clock
from .. import exec as bkexec
from ..config.models import Config, HostSettings
from ..fsutil import fsync_dir, make_private_dir, replace_symlink, syncfs, write_atomic
from ..layout import PARTIAL_PREFIX, HostDir, SnapshotName
from . import manifest, rsync
from .linktree import link_tree

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
    started = clock.now()
    previous = host_dir.latest_snapshot()
    previous_dir = host_dir.hourly / str(previous) if previous else None
    interrupted = host_dir.partials()
    staging = host_dir.hourly / f"{PARTIAL_PREFIX}{started.strftime('%Y-%m-%d_%H%M%S')}-{secrets.token_hex(3)}"
    transfer = _Transfer(config, settings, staging, on_progress)

    if dry_run:
        result, lines = await transfer.rsync([previous_dir] if previous_dir else [], dry_run=True)
        stats = rsync.parse_stats(lines)
        stats["deleted_files"] = _deleted_files(previous_files, stats)
        return SnapshotResult("warning" if transfer.warning else "ok", None, stats, transfer.warning)

    make_private_dir(config.backup_root)
    for directory in (host_dir.root, host_dir.hourly, host_dir.meta):
        make_private_dir(directory)
    log.info("snapshot.start", staging=staging.name, previous=str(previous) if previous else None,
             resume_from=[p.name for p in interrupted])
    t0 = time.monotonic()
    try:
        if previous_dir and not interrupted:
            stats = await transfer.from_linked_copy(previous_dir)
        else:
            # First snapshot, or resuming: --link-dest against the last complete
            # snapshot and every interrupted partial (slower, but rare).
            link_dests = ([previous_dir] if previous_dir else []) + interrupted
            _, lines = await transfer.rsync(link_dests[:MAX_LINK_DESTS])
            stats = rsync.parse_stats(lines)
            stats["deleted_files"] = _deleted_files(previous_files, stats)
    except asyncio.CancelledError:
        if not control.keep_partial:
            await _remove(staging)
        raise
    except BaseException:
        await _remove(staging)
        raise
    hashing_started = time.monotonic()
    try:
        new_manifest, stats["hashed_files"] = await asyncio.to_thread(
            _manifest_of, staging, host_dir, previous, transfer.itemized)
        stats["manifest_s"] = round(time.monotonic() - hashing_started, 3)
    except OSError as e:
        await _remove(staging)
        raise SnapshotFailed(f"cannot checksum the new snapshot: {e}") from e
    stats["duration_s"] = round(time.monotonic() - t0, 3)

    try:
        name = await asyncio.to_thread(_complete, host_dir, staging, started, stats, interrupted, new_manifest)
    except OSError as e:
        await _remove(staging)
        raise SnapshotFailed(f"cannot complete the snapshot: {e}") from e
    log.info("snapshot.complete", snapshot=str(name), **stats)
    status = "warning" if transfer.warning else "ok"
    return SnapshotResult(status, str(name), stats, transfer.warning)


class _Transfer:
    """The rsync runs of one snapshot into one staging directory."""

    def __init__(self, config, settings, staging: Path, on_progress):
        self.config, self.settings, self.staging = config, settings, staging
        self.on_progress = on_progress
        self.warnings: list[str] = []
        self.itemized: list[str] | None = None  # the incremental run's changes, for the manifest

    @property
    def warning(self) -> str | None:
        return "; ".join(self.warnings) or None

    async def rsync(self, link_dests: list[Path], *, dry_run: bool = False, dest: Path | None = None,
                    extra: tuple[str, ...] = (), progress: bool = True) -> tuple[bkexec.Result, list[str]]:
        """Run rsync into dest (the staging directory); fail unless it exits 0 or 24."""
        argv = rsync.snapshot_command(self.config, self.settings, dest or self.staging, link_dests,
                                      dry_run=dry_run, extra=extra)
        lines: list[str] = []

        def on_stdout(line: str) -> None:
            parsed = rsync.parse_progress(line)
            if parsed is None:
                lines.append(line)
            elif progress and self.on_progress:
                self.on_progress(parsed)

        result = await bkexec.run(argv, on_stdout=on_stdout)
        if result.returncode not in rsync.SUCCESS_CODES:
            raise SnapshotFailed(rsync.describe_failure(result.returncode, result.stderr_tail))
        if result.returncode == rsync.VANISHED and not dry_run:
            self.warnings.append(rsync.describe_failure(result.returncode, result.stderr_tail))
        return result, lines

    async def from_linked_copy(self, previous: Path) -> dict:
        """The fast incremental path: `cp -al` of the previous snapshot, then a
        plain rsync --delete into it — with one difference that keeps the
        previous snapshot immutable. rsync applies a permission-, owner-, xattr-
        or ACL-only change in place, i.e. to the inode the previous snapshot
        shares, so a dry run against the previous snapshot (in parallel with the
        copy: two cores, two walks) finds those entries first and they get an
        inode of their own before the real run."""
        probe = self.rsync([], dry_run=True, dest=previous, extra=rsync.ITEMIZE, progress=False)
        failure, (_, probe_lines) = await asyncio.gather(link_tree(previous, self.staging), probe)
        if failure:
            raise SnapshotFailed(f"cannot hardlink the previous snapshot: {failure}")
        private = rsync.attribute_only_changes(probe_lines)
        if private:
            await asyncio.to_thread(_give_own_inodes, self.staging, private)
        _, lines = await self.rsync([], extra=rsync.ITEMIZE)
        raced = sorted(set(rsync.attribute_only_changes(lines)) - set(private))
        if raced:
            # The source's metadata changed between the probe and the real run:
            # rsync updated those shared inodes in place. Say so loudly.
            self.warnings.append(
                f"metadata of {len(raced)} file(s) changed during the snapshot and was applied to inodes "
                f"shared with older snapshots: {', '.join(raced[:5])}")
        stats = rsync.parse_stats(lines)
        stats["private_copies"] = len(private)
        self.itemized = lines
        return stats


def _give_own_inodes(root: Path, paths: list[str]) -> None:
    """Replace each hardlinked entry with a private copy before rsync touches it.
    Regular files are copied locally (content and mtime, so rsync only updates
    their attributes); anything else is removed for rsync to recreate."""
    for relative in paths:
        path = root / relative
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        if st.st_nlink < 2:
            continue
        if stat.S_ISREG(st.st_mode):
            tmp = path.with_name(f".{path.name[:200]}.bkd-{secrets.token_hex(4)}")
            shutil.copy2(path, tmp, follow_symlinks=False)
            os.chown(tmp, st.st_uid, st.st_gid)
            os.replace(tmp, path)
        else:
            path.unlink()


def _manifest_of(staging: Path, host_dir: HostDir, previous: SnapshotName | None,
                 itemized: list[str] | None) -> tuple[manifest.Manifest, int]:
    """Checksums for the new tree, hashing only what rsync wrote when it can."""
    old = manifest.read(host_dir.manifest_file(previous)) if previous else None
    if itemized is not None and old is not None:
        written, deleted = rsync.written_and_deleted(itemized)
        return manifest.from_changes(staging, old, written, deleted)
    return manifest.by_inode(staging, host_dir.hourly / str(previous) if previous else None, old)


def _complete(host_dir: HostDir, staging: Path, started: datetime, stats: dict,
              interrupted: list[Path], checksums: manifest.Manifest) -> SnapshotName:
    """Staging → complete snapshot. The rename is the commit point: before it the
    tree, its manifest and its record are on disk; after it `latest` is switched
    atomically."""
    name = host_dir.free_name(started)
    record = {"name": str(name), "time": name.time.isoformat(), **stats}
    meta_file = host_dir.meta_file(name)
    manifest_file = host_dir.manifest_file(name)
    try:
        # Not fsynced one by one: the syncfs below flushes them with the tree.
        manifest.write(manifest_file, checksums, sync=False)
        write_atomic(meta_file, json.dumps(record, indent=1).encode(), sync=False)
        syncfs(staging)
        staging.rename(host_dir.hourly / str(name))
    except OSError:
        meta_file.unlink(missing_ok=True)
        manifest_file.unlink(missing_ok=True)
        raise
    fsync_dir(host_dir.hourly)
    replace_symlink(host_dir.latest, f"hourly/{name}")
    # The interrupted runs' files now live on in this snapshot.
    for partial in interrupted:
        shutil.rmtree(partial, ignore_errors=True)
    return name


async def _remove(path: Path) -> None:
    await asyncio.to_thread(shutil.rmtree, path, ignore_errors=True)
