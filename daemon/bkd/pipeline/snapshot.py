"""One snapshot of one host: rsync into a staging directory, then make it
complete with a single rename (SPEC §4)."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import secrets
import shutil
import threading
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
from .linktree import link_tree, unshare

log = structlog.get_logger()

MAX_LINK_DESTS = 20  # rsync's own limit
PROGRESS_EVERY = 0.2  # seconds; the engine publishes less often still


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
    transfer = _Transfer(config, settings, host_dir, staging, on_progress)

    if dry_run:
        lines = await transfer.dry_run([previous_dir] if previous_dir else [])
        stats = rsync.parse_stats(lines)
        stats["deleted_files"] = _deleted_files(previous_files, stats)
        return SnapshotResult("warning" if transfer.warning else "ok", None, stats, transfer.warning)

    make_private_dir(config.backup_root)
    for directory in (host_dir.root, host_dir.hourly, host_dir.meta):
        make_private_dir(directory)
    _remove_batches(host_dir)  # left by a run that died; only one run per host at a time
    log.info("snapshot.start", staging=staging.name, previous=str(previous) if previous else None,
             resume_from=[p.name for p in interrupted])
    t0 = time.monotonic()
    try:
        if previous and not interrupted:
            stats, checksums = await transfer.incremental(previous)
        else:
            # First snapshot, or resuming: --link-dest against the last complete
            # snapshot and every interrupted partial (slower, but rare).
            link_dests = ([previous_dir] if previous_dir else []) + interrupted
            stats, checksums = await transfer.pull(link_dests[:MAX_LINK_DESTS], previous)
    except asyncio.CancelledError:
        if not control.keep_partial:
            await _remove(staging)
        raise
    except OSError as e:
        await _remove(staging)
        raise SnapshotFailed(f"cannot build the new snapshot: {e}") from e
    except BaseException:
        await _remove(staging)
        raise
    stats["duration_s"] = round(time.monotonic() - t0, 3)

    try:
        name = await asyncio.to_thread(_complete, host_dir, staging, started, stats, interrupted, checksums)
    except OSError as e:
        await _remove(staging)
        raise SnapshotFailed(f"cannot complete the snapshot: {e}") from e
    log.info("snapshot.complete", snapshot=str(name), **stats)
    status = "warning" if transfer.warning else "ok"
    return SnapshotResult(status, str(name), stats, transfer.warning)


BATCH_PREFIX = ".batch-"


class _Transfer:
    """The rsync runs of one snapshot into one staging directory."""

    def __init__(self, config, settings, host_dir: HostDir, staging: Path, on_progress):
        self.config, self.settings, self.host_dir, self.staging = config, settings, host_dir, staging
        self.on_progress = on_progress
        self.warnings: list[str] = []

    @property
    def warning(self) -> str | None:
        return "; ".join(self.warnings) or None

    def _progress_and_stats(self, lines: list[str], phase: str = "transfer") -> Callable[[str], None]:
        """stdout of a run with --info=progress2: progress to on_progress (at
        most every PROGRESS_EVERY seconds, and the last one; rsync prints a
        line per file), the rest (--stats) to lines."""
        last = 0.0

        def on_stdout(line: str) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last < PROGRESS_EVERY and not line.startswith("Number of files"):
                if rsync.looks_like_progress(line):
                    return
            parsed = rsync.parse_progress(line)
            if parsed is None:
                lines.append(line)
            else:
                last = now
                if self.on_progress:
                    self.on_progress({**parsed, "phase": phase})
        return on_stdout

    async def _rsync(self, argv: list[str], *, allow: tuple[int, ...] = rsync.SUCCESS_CODES,
                     **kwargs) -> bkexec.Result:
        """Run an rsync; fail unless it exits with a code in allow; exit 24 is a warning."""
        result = await bkexec.run(argv, **kwargs)
        if result.returncode not in allow:
            raise SnapshotFailed(rsync.describe_failure(result.returncode, result.stderr_tail))
        if result.returncode == rsync.VANISHED and "--dry-run" not in argv:
            self.warnings.append(rsync.describe_failure(result.returncode, result.stderr_tail))
        return result

    async def dry_run(self, link_dests: list[Path]) -> list[str]:
        lines: list[str] = []
        argv = rsync.snapshot_command(self.config, self.settings, self.staging, link_dests, dry_run=True)
        await self._rsync(argv, on_stdout=self._progress_and_stats(lines))
        return lines

    async def pull(self, link_dests: list[Path], previous: SnapshotName | None) -> tuple[dict, list[bytes]]:
        """rsync into the empty staging directory (--link-dest when there is
        anything to link against). Files are hashed while rsync transfers the
        next ones; a walk by inode afterwards makes the manifest exact."""
        hasher = _Hasher(self.staging)
        channel = bkexec.Channel(hasher.on_item)
        lines: list[str] = []
        argv = rsync.snapshot_command(self.config, self.settings, self.staging, link_dests,
                                      extra=rsync.log_items(channel.path))
        try:
            await self._rsync(argv, on_stdout=self._progress_and_stats(lines), channel=channel)
            known = await hasher.finish()
        finally:
            hasher.close()
        stats = rsync.parse_stats(lines)
        started = time.monotonic()
        previous_dir = self.host_dir.hourly / str(previous) if previous else None
        old = await asyncio.to_thread(manifest.read, self.host_dir.manifest_file(previous)) if previous else None
        checksums, hashed_now = await asyncio.to_thread(manifest.by_inode, self.staging, previous_dir, old, known)
        log.info("snapshot.hashed", while_transferring=len(known), after=hashed_now)
        stats.update(files=len(checksums), hashed_files=len(known) + hashed_now,
                     deleted_files=len(set(old or ()) - set(checksums)),
                     manifest_s=round(time.monotonic() - started, 3))
        return stats, manifest.sorted_lines(checksums)

    async def incremental(self, previous: SnapshotName) -> tuple[dict, list[bytes]]:
        """The usual case, in three steps that never change the previous snapshot:

        1. rsync compares the source with the previous snapshot and writes the
           whole change to a batch file (--only-write-batch), touching nothing;
           at the same time `cp -al` links a copy of the previous snapshot.
        2. Every entry whose attributes the batch changes in place gets an
           inode of its own in the copy (the itemized list says which).
        3. rsync applies the batch to the copy (--read-batch). The source is
           read once, in step 1, so nothing it does later can reach a shared
           inode; the batch is applied to exactly what it was made against.
        """
        previous_dir = self.host_dir.hourly / str(previous)
        batch = self.host_dir.meta / f"{BATCH_PREFIX}{self.staging.name}"
        started = time.monotonic()
        old_lines = await asyncio.to_thread(manifest.read_lines, self.host_dir.manifest_file(previous))
        read_s = time.monotonic() - started
        estimate = _Estimate(old_lines or [], batch, self.on_progress)
        changes: list[rsync.Item] = []
        summary: list[str] = []  # --stats

        def on_change(line: str) -> None:
            item = rsync.parse_item(line)
            if item is None:
                summary.append(line)
            else:
                changes.append(item)
                estimate.at(item.name)

        hasher = _Hasher(self.staging)
        try:
            write = self._rsync(rsync.write_batch_command(self.config, self.settings, previous_dir, batch),
                                on_stdout=on_change)
            failure, written = await estimate.during(asyncio.gather(link_tree(previous_dir, self.staging), write))
            if failure:
                raise SnapshotFailed(f"cannot hardlink the previous snapshot: {failure}")
            private = [item.name for item in changes if item.in_place]
            unshared = await asyncio.to_thread(unshare, self.staging, private)
            applied: list[rsync.Item] = []
            stdout: list[str] = []
            complaints: list[str] = []

            def on_applied(line: str) -> None:
                if item := rsync.parse_item(line):
                    applied.append(item)
                    hasher.on(item)

            channel = bkexec.Channel(on_applied)
            # A file that vanished while the batch was written has no data in it:
            # rsync keeps the previous copy and exits 23 saying so, for those files only.
            read = await self._rsync(rsync.read_batch_command(self.settings, batch, self.staging, channel.path),
                                     allow=(0, 23) if written.returncode == rsync.VANISHED else (0,),
                                     on_stdout=self._progress_and_stats(stdout, "apply"),
                                     on_stderr=complaints.append, channel=channel)
            if read.returncode == 23 and not _only_missing_data(complaints):
                raise SnapshotFailed(rsync.describe_failure(23, complaints))
            known = await hasher.finish()
        finally:
            hasher.close()
            _remove_batches(self.host_dir, batch.name)
        stats = rsync.parse_stats(stdout)
        stats["received_bytes"] = rsync.parse_stats(summary).get("received_bytes", 0)  # over the wire
        stats["private_copies"] = unshared
        raced = sorted({item.name for item in applied if item.in_place} - set(private))
        if raced:  # cannot happen by construction: say so loudly if it ever does
            names = ", ".join(os.fsdecode(name) for name in raced[:5])
            log.error("snapshot.shared_inode_changed", files=len(raced), examples=names)
            self.warnings.append(f"rsync changed the metadata of {len(raced)} file(s) shared with older "
                                 f"snapshots in place: {names}")
        started = time.monotonic()
        checksums = await asyncio.to_thread(self._manifest_of_changes, previous, old_lines, applied, known, stats)
        stats["manifest_s"] = round(read_s + time.monotonic() - started, 3)
        return stats, checksums

    def _manifest_of_changes(self, previous: SnapshotName, old_lines: list[bytes] | None,
                             applied: list[rsync.Item], known: dict[bytes, manifest.Hashed],
                             stats: dict) -> list[bytes]:
        """The previous manifest updated with what rsync did to the copy, when
        its itemized list accounts for everything its statistics count; else
        (a line lost, a file gone) the tree itself, walked by inode. Files
        hashed while rsync applied the batch keep that checksum where they
        are still the inode that was hashed."""
        if old_lines is not None and rsync.items_match_stats(applied, stats):
            removed, trees, written = [], [], []
            for item in applied:
                if item.update == "*":
                    removed.append(item.name)
                    trees.append(item.name)
                elif item.wrote_file:
                    written.append(item.name)
                    trees.append(item.name)  # a directory replaced by a file
                elif item.update in "<>ch" or item.is_new:  # a file replaced by something else
                    removed.append(item.name)
                    if item.type != "d":
                        trees.append(item.name)
            hashed = manifest.rehash(self.staging, written, known)
            if len(hashed) == len(set(written)):
                added = {name: (digest, size) for name, (_inode, digest, size) in hashed.items()}
                lines, gone = manifest.updated(old_lines, removed, trees, added)
                if len(lines) == stats.get("files"):
                    stats.update(hashed_files=len(hashed), deleted_files=gone)
                    return lines
        log.warning("snapshot.manifest_walk", reason="the itemized list does not account for rsync's statistics")
        previous_dir = self.host_dir.hourly / str(previous)
        old = manifest.read(self.host_dir.manifest_file(previous))
        checksums, hashed_now = manifest.by_inode(self.staging, previous_dir, old, known)
        stats.update(files=len(checksums), hashed_files=len(known) + hashed_now,
                     deleted_files=len(set(old or ()) - set(checksums)))
        return manifest.sorted_lines(checksums)


def _only_missing_data(complaints: list[str]) -> bool:
    """rsync --read-batch's stderr names only files the batch has no data for."""
    return all(line.startswith(("(No batched update for ", "rsync error: some files/attrs were not transferred"))
               for line in complaints if line.strip())


def _remove_batches(host_dir: HostDir, name: str | None = None) -> None:
    """Remove one batch file (name) or all of them, with rsync's .sh beside each."""
    try:
        entries = [e.name for e in os.scandir(host_dir.meta) if e.name.startswith(BATCH_PREFIX)]
    except FileNotFoundError:
        return
    for entry in entries:
        if name is None or entry in (name, f"{name}.sh"):
            (host_dir.meta / entry).unlink(missing_ok=True)


class _Hasher:
    """Hashes the files rsync writes while it writes the next ones, on a
    thread of its own. A file is logged before it is renamed into place (over
    SSH just before, from a local sender well before), so each is hashed a
    moment after it was logged, and retried a few times if it is not there
    yet; what is still missing at the end is left to the walk."""

    LAG = 0.25  # seconds
    TRIES = 3

    def __init__(self, root: Path):
        self.root = root
        self.queue: collections.deque[tuple[float, bytes, int]] = collections.deque()
        self.results: dict[bytes, manifest.Hashed] = {}
        self.ended = threading.Event()  # rsync is done: no need to wait any more
        self.stop = threading.Event()   # give up (the run failed)
        self.worker = threading.Thread(target=self._work, name="bkd-hasher", daemon=True)
        self.worker.start()

    def on_item(self, line: str) -> None:
        # A first pull logs a line per entry: skip what is not a written file cheaply.
        code = line.find("] ") + 2
        if line[code + 1:code + 2] == "f" and (item := rsync.parse_item(line)):
            self.on(item)

    def on(self, item: rsync.Item) -> None:
        if item.wrote_file:
            self.queue.append((time.monotonic() + self.LAG, item.name, self.TRIES))

    def _work(self) -> None:
        root_fd = None
        try:
            while not self.stop.is_set():
                if not self.queue:
                    if self.ended.is_set():
                        return
                    time.sleep(0.05)
                    continue
                due, name, tries = self.queue[0]
                wait = due - time.monotonic()
                if wait > 0 and not self.ended.is_set():
                    self.ended.wait(min(wait, 0.05))
                    continue
                self.queue.popleft()
                if root_fd is None:
                    try:
                        root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)  # rsync creates it
                    except FileNotFoundError:
                        continue
                result = manifest.hash_file(root_fd, name)
                if result is not None:
                    self.results[name] = result
                elif tries > 1 and not self.ended.is_set():
                    self.queue.append((time.monotonic() + self.LAG, name, tries - 1))
        finally:
            if root_fd is not None:
                os.close(root_fd)

    async def finish(self) -> dict[bytes, manifest.Hashed]:
        """rsync has ended: hash what is queued now, without waiting."""
        self.ended.set()
        await asyncio.to_thread(self.worker.join)
        return self.results

    def close(self) -> None:
        self.stop.set()
        self.ended.set()
        self.worker.join()


class _Estimate:
    """Progress while the batch is written, when rsync prints only the itemized
    list: the share of the previous snapshot's files (in path order) up to the
    last change rsync listed, and the bytes in the batch file so far."""

    EVERY = 0.5  # seconds between reports

    def __init__(self, old_lines: list[bytes], batch: Path, on_progress):
        self.old_lines, self.batch, self.on_progress = old_lines, batch, on_progress
        self.fraction = 0.0
        self.started = time.monotonic()
        self.reported = 0.0

    def at(self, name: bytes) -> None:
        if self.old_lines:
            self.fraction = max(self.fraction, manifest.position(self.old_lines, name))
        self.report()

    def report(self, final: bool = False) -> None:
        now = time.monotonic()
        if not self.on_progress or (not final and now - self.reported < self.EVERY):
            return
        self.reported = now
        try:
            done = self.batch.stat().st_size
        except FileNotFoundError:
            done = 0
        elapsed = max(now - self.started, 1e-3)
        percent = 100 if final else min(int(self.fraction * 100), 99)
        eta = 0 if final else (round(elapsed * (1 / self.fraction - 1)) if self.fraction > 0 else None)
        self.on_progress({"percent": percent, "bytes": done, "rate": round(done / elapsed), "eta_s": eta,
                          "phase": "transfer"})

    async def during(self, work):
        """Await work, reporting at least every EVERY seconds meanwhile."""
        async def tick():
            while True:
                await asyncio.sleep(self.EVERY)
                self.report()
        ticker = asyncio.create_task(tick())
        try:
            result = await work
        finally:
            ticker.cancel()
        self.report(final=True)
        return result


def _complete(host_dir: HostDir, staging: Path, started: datetime, stats: dict,
              interrupted: list[Path], checksums: list[bytes]) -> SnapshotName:
    """Staging → complete snapshot. The rename is the commit point: before it the
    tree, its manifest and its record are on disk; after it `latest` is switched
    atomically."""
    name = host_dir.free_name(started)
    meta_file = host_dir.meta_file(name)
    manifest_file = host_dir.manifest_file(name)
    try:
        # Not fsynced one by one: the syncfs below flushes them with the tree.
        writing = time.monotonic()
        manifest.write_lines(manifest_file, checksums, sync=False)
        stats["manifest_s"] = round(stats.get("manifest_s", 0) + time.monotonic() - writing, 3)
        record = {"name": str(name), "time": name.time.isoformat(), **stats}
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
