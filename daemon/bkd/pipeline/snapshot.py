"""One snapshot of one host: rsync into a staging directory, then make it
complete with a single rename (SPEC §4)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import json
import os
import secrets
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import structlog

from ..config.models import Config, HostSettings
from ..infra import clock, exec as bkexec
from ..infra.fsutil import (
    copy_sparse,
    fsync_dir,
    make_private_dir,
    punch_holes_like,
    replace_symlink,
    syncfs,
    write_atomic,
)
from ..tree import holds
from ..tree.layout import PARTIAL_PREFIX, HostDir, SnapshotName
from . import anomaly, changes, damage, entropy, failures, manifest, rsync
from .linktree import link_tree

log = structlog.get_logger()

MAX_LINK_DESTS = 20  # rsync's own limit
PROGRESS_EVERY = 0.2  # seconds; the engine publishes less often still


class SnapshotFailed(Exception):
    """The run failed; the previous snapshot is untouched and no partial is left.
    refusal: the local ssh client reported a refused login or host key (failures.py)."""

    def __init__(self, message: str, refusal: str | None = None):
        super().__init__(message)
        self.refusal = refusal


@dataclass
class SnapshotResult:
    status: str  # ok | warning
    name: str | None  # None for a dry run
    stats: dict  # for every role: with the change profile's numbers and the anomaly verdict
    warning: str | None = None
    examples: dict | None = None  # the names behind the profile (extensions, paths): admins only
    mismatches: list[dict] = field(default_factory=list)  # files that differ from the expected manifest


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
                        on_progress: Callable[[dict], None] | None = None,
                        ssh_log: rsync.SshLog | None = None, name: SnapshotName | None = None,
                        expected: Callable[[list[bytes]], Awaitable[list[bytes] | None]] | None = None,
                        shared: str | None = None) -> SnapshotResult:
    """A snapshot of settings' host from its source. A copy of another
    server's snapshot (replica/pull.py) gives the name it keeps and the
    manifest it must match (sorted lines, awaited once the transfer is done
    with the copy's own lines: it may arrive meanwhile, and needs checking
    only where it differs): the files are hashed as usual and compared with
    it before the rename, and that manifest is the copy's (the result's
    `mismatches` say where the copy differs). shared: the ControlPath of an
    ssh connection to the source's host (shared_connection) to use."""
    control = control or RunControl()
    host_dir = HostDir.of(config.backup_root, settings.host.name)
    started = clock.now()
    previous = host_dir.latest_snapshot()
    previous_dir = host_dir.hourly / str(previous) if previous else None
    interrupted = host_dir.partials()
    staging = host_dir.hourly / f"{PARTIAL_PREFIX}{started.strftime('%Y-%m-%d_%H%M%S')}-{secrets.token_hex(3)}"
    transfer = _Transfer(config, settings, host_dir, staging, on_progress, ssh_log, shared)
    if previous and not dry_run:
        # Files verify found damaged in the previous snapshot: fetched again in full, never linked to it.
        transfer.refetch = await asyncio.to_thread(damage.Ledger(host_dir).refetch, str(previous))

    if dry_run:
        lines = await transfer.dry_run([previous_dir] if previous_dir else [])
        stats = rsync.parse_stats(lines)
        stats["deleted_files"] = _deleted_files(previous_files, stats)
        return SnapshotResult("warning" if transfer.warning else "ok", None, stats, transfer.warning)

    make_private_dir(config.backup_root)
    for directory in (host_dir.root, host_dir.hourly, host_dir.meta):
        make_private_dir(directory, under=config.backup_root)  # never through a symlink planted there
    remove_leftovers(host_dir)
    log.info("snapshot.start", staging=staging.name, previous=str(previous) if previous else None,
             resume_from=[p.name for p in interrupted], refetch=len(transfer.refetch))
    t0, cpu0 = time.monotonic(), time.process_time()
    try:
        if previous and not interrupted:
            stats, checksums = await transfer.incremental(previous)
        else:
            # First snapshot, or resuming: --link-dest against the last complete
            # snapshot and every interrupted partial (slower, but rare).
            link_dests = ([previous_dir] if previous_dir else []) + interrupted
            stats, checksums = await transfer.pull(link_dests[:MAX_LINK_DESTS], previous)
        stats["duration_s"] = round(time.monotonic() - t0, 3)
        # The change record, the profile and its verdict: before the commit, so
        # that a snapshot is never complete without them, nor a suspect one unheld.
        assessing = time.monotonic()
        assessment = await asyncio.to_thread(transfer.assess, previous, settings.anomaly)
        stats["anomaly_s"] = round(time.monotonic() - assessing, 3)
        expected_lines = await expected(checksums) if expected is not None else None
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
    try:
        name, mismatches = await asyncio.to_thread(_complete, host_dir, staging, name or host_dir.free_name(started),
                                                   stats, interrupted, checksums, expected_lines, previous,
                                                   assessment, settings.anomaly.hold)
    except OSError as e:
        await _remove(staging)
        raise SnapshotFailed(f"cannot complete the snapshot: {e}") from e
    log.info("snapshot.complete", snapshot=str(name), **_headline(assessment),
             **{k: v for k, v in stats.items() if k not in ("profile", "anomaly")})
    # The daemon's CPU time (all its threads) and what reading rsync's output
    # and hashing beside it took of it: bench/snapshot.py reports them.
    log.info("snapshot.cpu", process_s=round(time.process_time() - cpu0, 3),
             reading_s=round(transfer.reading_cpu_s, 3), hashing_beside_s=round(transfer.hashing_cpu_s, 3))
    if assessment.verdict and assessment.verdict["suspect"]:
        log.warning("snapshot.suspect", snapshot=str(name), signals=anomaly.explain(assessment.verdict["signals"]),
                    held=settings.anomaly.hold)
    status = "warning" if transfer.warning else "ok"
    return SnapshotResult(status, str(name), stats, transfer.warning, assessment.names, mismatches)


LIST_PREFIX = ".files-"


@contextlib.asynccontextmanager
async def shared_connection(config: Config, settings: HostSettings, ssh_log: rsync.SshLog | None = None):
    """An `ssh -M` connection to the source's host, open while the block runs:
    the rsyncs given its ControlPath (yielded; None for a local source) share
    it, so that one run makes one key exchange; one that starts before it is
    up connects on its own."""
    if not settings.host.is_remote:
        yield None
        return
    directory = tempfile.mkdtemp(prefix="bkd-ssh-")  # private (0700), and short enough for a socket
    path = os.path.join(directory, "master")
    master = asyncio.create_task(bkexec.run(rsync.ssh_master_command(config, settings, path, ssh_log)))
    try:
        yield path
    finally:
        master.cancel()  # stops its process group
        await asyncio.gather(master, return_exceptions=True)
        shutil.rmtree(directory, ignore_errors=True)


class _Transfer:
    """The rsync runs of one snapshot into one staging directory."""

    def __init__(self, config, settings, host_dir: HostDir, staging: Path, on_progress,
                 ssh_log: rsync.SshLog | None = None, shared: str | None = None):
        self.config, self.settings, self.host_dir, self.staging = config, settings, host_dir, staging
        self.on_progress = on_progress
        self.ssh_log = ssh_log  # what the local ssh client says, apart from the host's stderr
        self.warnings: list[str] = []
        self.shared = shared  # the ssh master's socket while one runs
        self.hashing_after_s = 0.0  # hashing left when the copy ended: part of the manifest step
        self.refetch: dict[bytes, int] = {}  # path → the damaged inode the previous snapshot holds there
        self.reading_cpu_s = 0.0  # CPU time spent reading rsync's output (bench/snapshot.py reports it)
        self.hashing_cpu_s = 0.0  # CPU time of the hasher beside the transfer
        self.made: _Made | None = None  # how the new tree was made: what its change record starts from

    def assess(self, previous: SnapshotName | None, settings) -> anomaly.Assessment:
        """The change record of the new tree against the previous snapshot, its profile and verdict."""
        made = self.made
        previous_dir = self.host_dir.hourly / str(previous) if previous else None
        return anomaly.assess(self.host_dir, self.staging, previous_dir, made.files_before, made.new_sums,
                              made.old_sums, made.candidates, made.hashed, settings, made.listed)

    @property
    def warning(self) -> str | None:
        return "; ".join(self.warnings) or None

    def _output(self, on_item: Callable[[rsync.Item], None] | None = None, phase: str | None = "transfer"
                ) -> rsync.Output:
        """A reader of an rsync's stdout: its items to on_item, its progress
        (rsync prints a line per file) to on_progress at most every
        PROGRESS_EVERY seconds and once at the end, tagged with phase."""
        report = None
        if phase and self.on_progress:
            def report(parsed: dict) -> None:
                self.on_progress({**parsed, "phase": phase})
        return rsync.Output(on_item, report, PROGRESS_EVERY)

    async def _rsync(self, argv: list[str], output: rsync.Output, *,
                     on_failure: type[SnapshotFailed] = SnapshotFailed) -> bkexec.Result:
        """Run an rsync, its stdout read by output; fail unless it exits 0 or 24
        (a warning); exit 23 (some entries could not be copied) raises
        on_failure. rsync's --timeout misses a remote rsync that is frozen while
        ssh keeps the connection up (both ends still trade keepalives): bkd
        stops one that moves no data for as long."""
        try:
            result = await bkexec.run(argv, on_stdout_bytes=output.feed,
                                      stall=self.settings.rsync.timeout.total_seconds())
        except bkexec.Stalled as e:
            raise SnapshotFailed(f"rsync hung: {e} (rsync.timeout); its processes were stopped") from None
        finally:
            self.reading_cpu_s += output.cpu_s
        output.close()
        if output.dropped:
            log.warning("snapshot.output_dropped", lines=output.dropped, longer_than=rsync.MAX_LINE)
        if result.returncode not in rsync.SUCCESS_CODES:
            failure = on_failure if result.returncode == rsync.PARTIAL else SnapshotFailed
            said = self.ssh_log.said() if self.ssh_log else []
            raise failure(rsync.describe_failure(result.returncode, result.stderr_tail, said),
                          failures.ssh_refusal(said))
        if result.returncode == rsync.VANISHED and "--dry-run" not in argv:
            self.warnings.append(rsync.describe_failure(result.returncode, result.stderr_tail))
        return result

    async def dry_run(self, link_dests: list[Path]) -> list[str]:
        output = self._output()
        argv = rsync.snapshot_command(self.config, self.settings, self.staging, link_dests, dry_run=True,
                                      ssh_log=self.ssh_log)
        await self._rsync(argv, output)
        return list(output.lines)

    async def pull(self, link_dests: list[Path], previous: SnapshotName | None,
                   old_lines: list[bytes] | None = None) -> tuple[dict, list[bytes]]:
        """rsync into the empty staging directory (--link-dest when there is
        anything to link against). Files are hashed while rsync transfers the
        next ones; a walk by inode afterwards makes the manifest exact (unless
        nothing was linked and every file rsync counted was hashed).
        old_lines: the previous manifest, when the run has read it already."""
        hasher = _Hasher(self.staging, self.host_dir.hourly / str(previous) if previous else None)
        copied: list[bytes] = []  # files rsync copied from a link-dest: every byte written, holes too
        listed: list[tuple[bytes, str]] = []  # into an empty directory: every entry rsync made

        def on_item(item: rsync.Item) -> None:
            hasher.on(item)
            if item.update == "c" and item.type == "f":
                copied.append(item.name)
            if not link_dests:
                listed.append((item.name, item.type))

        output = self._output(on_item)
        try:
            argv = rsync.snapshot_command(self.config, self.settings, self.staging, link_dests, extra=rsync.ITEMS,
                                          shared=self.shared, ssh_log=self.ssh_log)
            await self._rsync(argv, output)
            refetched = await self._refetch_linked() if link_dests else {}
            started = time.monotonic()
            known = await hasher.finish()
        finally:
            hasher.close()
            self.hashing_cpu_s += hasher.cpu_s
        if copied:
            await asyncio.to_thread(_holes_again, self.staging, link_dests, copied)
        stats = rsync.parse_stats(output.lines)
        _add_refetched(stats, refetched)
        previous_dir = self.host_dir.hourly / str(previous) if previous else None
        old = await asyncio.to_thread(self._previous_manifest, previous, old_lines) if previous else None
        if not link_dests and len(known) == stats.get("files"):
            # Into an empty directory rsync writes each path once, so each was
            # hashed as it stays, and the count says none is missing: no walk.
            checksums, hashed_now = {name: (entry.sha256, entry.size) for name, entry in known.items()}, 0
        else:
            checksums, hashed_now = await _hashing(manifest.by_inode, self.staging, previous_dir, old, known)
        log.info("snapshot.hashed", while_transferring=len(known), after=hashed_now,
                 seconds_after=round(time.monotonic() - started, 3))
        stats.update(_walked(checksums, old, known, hashed_now), manifest_s=round(time.monotonic() - started, 3))
        # A first pull's entries are rsync's list, when it accounts for what rsync says it made.
        listed_ok = not link_dests and not hashed_now and len(listed) == stats.get("created")
        self.made = _Made(None, changes.Sums(parsed=checksums), changes.Sums(parsed=old), known,
                          None if previous is None else len(old or ()), listed if listed_ok else None)
        return stats, manifest.sorted_lines(checksums)

    async def incremental(self, previous: SnapshotName) -> tuple[dict, list[bytes]]:
        """The incremental snapshot over one shared SSH connection (see _compare_and_copy)."""
        if self.shared is not None:  # the caller's
            return await self._compare_and_copy(previous)
        async with shared_connection(self.config, self.settings, self.ssh_log) as self.shared:
            try:
                return await self._compare_and_copy(previous)
            finally:
                self.shared = None

    async def _compare_and_copy(self, previous: SnapshotName) -> tuple[dict, list[bytes]]:
        """The usual case, in three steps that never change the previous snapshot:

        1. A dry run lists what changed between the source and the previous
           snapshot (its stdout is that list alone); at the same time `cp -al`
           links a copy of the previous snapshot.
        2. Every listed entry and every deleted one is removed from the copy,
           so that nothing the next step writes is an inode an older snapshot
           holds (a directory that stays one is the copy's own and is kept).
        3. rsync copies only the listed entries (--files-from: no recursion,
           no --delete) with --link-dest to the previous snapshot; for an entry
           missing in the copy, rsync only links an identical file or writes a
           new one. Whatever the source does meanwhile, no step changes an
           inode that the previous snapshot shares.

        A file whose attributes alone changed gets a private copy of its data
        in step 2 (holes kept), which step 3 gives its new attributes: rsync's
        own local copy of it would write every byte of a sparse file.

        If the source changed between 1 and 3 so that the copy does not match
        the list — rsync cannot copy it (exit 23: a listed file's directory is
        gone), or it reports an entry with another type than the compare did
        (a directory swapped for a symlink, or back) — the snapshot is taken
        in one pass with --link-dest instead."""
        previous_dir = self.host_dir.hourly / str(previous)
        estimate = _Estimate(self.on_progress)
        reading = asyncio.create_task(asyncio.to_thread(manifest.read_lines, self.host_dir.manifest_file(previous)))
        reading.add_done_callback(lambda task: task.cancelled() or task.exception() or estimate.knows(task.result()))
        changes: list[rsync.Item] = []

        def on_change(item: rsync.Item) -> None:
            changes.append(item)
            estimate.at(item.name)

        output = self._output(on_change, phase=None)
        compare = self._rsync(rsync.compare_command(self.config, self.settings, previous_dir, self.shared,
                                                    self.ssh_log), output)
        failure, _ = await estimate.during(_together(link_tree(previous_dir, self.staging), compare))
        if failure:
            raise SnapshotFailed(f"cannot hardlink the previous snapshot: {failure}")
        old_lines = await reading  # read meanwhile
        compared = rsync.parse_stats(output.lines)
        if not rsync.items_match_stats(changes, compared):
            # Cannot happen with rsync's own output; if it ever does, one pass.
            log.error("snapshot.compare_unaccounted", items=len(changes), stats=compared)
            return await self._in_one_pass(previous, old_lines)
        plan = _Plan(changes, self.refetch)
        private = await asyncio.to_thread(plan.clear, self.staging, previous_dir)
        stats = {key: compared.get(key, 0) for key in ("entries", "created", "created_files", "deleted", "bytes")}
        stats.update(changed_files=0, transferred_bytes=0, received_bytes=0)
        known: dict[bytes, manifest.Hashed] = {}
        copied: set[bytes] = set()
        try:
            if plan.refetch:  # first: the fetch then sets the times of the directories they are in
                _add_refetched(stats, await self._refetch(plan.refetch))
            if plan.fetch:
                known, copied, fetched = await self._fetch(previous_dir, plan, private)
                stats.update(changed_files=fetched.get("changed_files", 0),
                             **{key: stats[key] + fetched.get(key, 0) for key in ("transferred_bytes",
                                                                                  "received_bytes")})
            if plan.root:
                await self._rsync(rsync.root_command(self.config, self.settings, self.staging, self.shared,
                                                     self.ssh_log),
                                  self._output(phase=None), on_failure=_SourceMoved)
        except _SourceMoved as e:
            log.warning("snapshot.source_moved", error=str(e), fallback="one pass with --link-dest")
            return await self._in_one_pass(previous, old_lines)
        started = time.monotonic()
        checksums = await _hashing(self._manifest_of_changes, previous, old_lines, plan, compared, known, copied,
                                   stats)
        stats["manifest_s"] = round(self.hashing_after_s + time.monotonic() - started, 3)
        return stats, checksums

    async def _fetch(self, previous_dir: Path, plan: _Plan, private: set[bytes]
                     ) -> tuple[dict[bytes, manifest.Hashed], set[bytes], dict]:
        """Step 3: copy the planned entries, hashing files as they arrive.
        Also returns the files that hold the previous snapshot's data under
        other attributes (rsync's copies, and the private copies of step 2
        that it gave their new attributes)."""
        files_from = self.host_dir.meta / f"{LIST_PREFIX}{self.staging.name}"
        hasher = _Hasher(self.staging, previous_dir)
        fetched: list[rsync.Item] = []

        def on_fetched(item: rsync.Item) -> None:
            fetched.append(item)
            if item.update != "c":  # a local copy of the previous snapshot's file: its checksum is known
                hasher.on(item)

        try:
            await asyncio.to_thread(files_from.write_bytes, b"".join(name + b"\0" for name in plan.fetch))
            argv = rsync.fetch_command(self.config, self.settings, self.staging, previous_dir, files_from,
                                       self.shared, self.ssh_log)
            output = self._output(on_fetched)
            await self._rsync(argv, output, on_failure=_SourceMoved)
            finishing = time.monotonic()
            known = await hasher.finish()
            self.hashing_after_s = time.monotonic() - finishing
        finally:
            hasher.close()
            self.hashing_cpu_s += hasher.cpu_s
            files_from.unlink(missing_ok=True)
        if moved := plan.moved(fetched):
            raise _SourceMoved(f"{os.fsdecode(moved)!r} is not what the compare listed any more")
        in_place = sorted({item.name for item in fetched if item.in_place and item.update == "."} - private)
        if in_place:  # cannot happen by construction: say so loudly if it ever does
            names = ", ".join(os.fsdecode(name) for name in in_place[:5])
            log.error("snapshot.shared_inode_changed", files=len(in_place), examples=names)
            self.warnings.append(f"rsync changed the metadata of {len(in_place)} existing file(s) in place: {names}")
        # rsync lists every entry it found (-ii): a private copy it did not
        # list is gone from the source, and one it wrote anew holds new data.
        listed = {item.name for item in fetched}
        gone = private - listed
        if gone:
            await asyncio.to_thread(_remove_entries, self.staging, gone)
        written = {item.name for item in fetched if item.wrote_file}
        copied = {item.name for item in fetched if item.update == "c" and item.type == "f"}
        return known, copied | ((private & listed) - written), rsync.parse_stats(output.lines)

    async def _refetch(self, names: list[bytes]) -> dict:
        """Fetch names (none of them in the staging directory) again in full,
        without --link-dest: each is a damaged copy in the previous snapshot
        (verify found it) that rsync's quick check would link or copy again."""
        files_from = self.host_dir.meta / f"{LIST_PREFIX}refetch-{self.staging.name}"
        output = self._output(phase=None)
        try:
            await asyncio.to_thread(files_from.write_bytes, b"".join(name + b"\0" for name in names))
            await self._rsync(rsync.refetch_command(self.config, self.settings, self.staging, files_from,
                                                    self.shared, self.ssh_log),
                              output, on_failure=_SourceMoved)
        finally:
            files_from.unlink(missing_ok=True)
        log.info("snapshot.refetched", files=len(names))
        return {"refetched_files": len(names), **rsync.parse_stats(output.lines)}

    async def _refetch_linked(self) -> dict:
        """After a --link-dest pass, which linked each damaged copy again, or
        copied it where only attributes changed: those files are removed and
        fetched again in full."""
        def remove() -> list[bytes]:
            found = [path for path in sorted(self.refetch) if damage.inode_at(self.staging, path) is not None]
            root_fd = os.open(self.staging, os.O_RDONLY | os.O_DIRECTORY)
            try:
                for path in found:
                    _remove_entry(root_fd, path, keep_directory=True)
            finally:
                os.close(root_fd)
            return found

        found = await asyncio.to_thread(remove)
        return await self._refetch(found) if found else {}

    async def _in_one_pass(self, previous: SnapshotName, old_lines: list[bytes] | None) -> tuple[dict, list[bytes]]:
        await _remove(self.staging)
        return await self.pull([self.host_dir.hourly / str(previous)], previous, old_lines)

    def _previous_manifest(self, previous: SnapshotName, old_lines: list[bytes] | None) -> manifest.Manifest | None:
        """The previous snapshot's manifest by path, from its lines when the run
        has them (a run reads the previous manifest once)."""
        manifest_file = self.host_dir.manifest_file(previous)
        return manifest.read(manifest_file) if old_lines is None else manifest.parse(old_lines, manifest_file.name)

    def _manifest_of_changes(self, previous: SnapshotName, old_lines: list[bytes] | None, plan: _Plan,
                             compared: dict, known: dict[bytes, manifest.Hashed], copied: set[bytes],
                             stats: dict, abandoned: threading.Event) -> list[bytes]:
        """The previous manifest with every changed path taken out and what is
        there now put in: a file that is the previous snapshot's inode, or
        rsync's copy of it (an attribute-only change), keeps its checksum; one
        hashed during the copy keeps that checksum if it is still that inode;
        any other is hashed. Trusted when it holds as many files as the
        compare counted; else (the source changed meanwhile) the tree itself,
        walked by inode."""
        previous_dir = self.host_dir.hourly / str(previous)
        if old_lines is not None:
            now = manifest.regular_files_at(self.staging, previous_dir, plan.changed)
            missing = [name for name in plan.files if name not in now]
            if missing:  # gone from the source between the compare and the copy
                self.warnings.append(f"{len(missing)} changed file(s) vanished before they could be copied: "
                                     + ", ".join(os.fsdecode(name) for name in missing[:5]))
            added, to_hash = {}, []
            for name, (inode, previous_inode) in now.items():
                entry = manifest.lookup(old_lines, name) if inode == previous_inode or name in copied else None
                if entry is None and name in known and known[name].inode == inode:
                    entry = (known[name].sha256, known[name].size)
                if entry is None:
                    to_hash.append(name)
                else:
                    added[name] = entry
            sampled = {name for name in to_hash if name in now and now[name][1] is not None}
            hashed = manifest.hash_files(self.staging, to_hash, abandoned=abandoned, sampled=sampled)
            added.update({name: (found.sha256, found.size) for name, found in hashed.items()})
            dropped: dict[bytes, str] = {}
            lines, gone = manifest.updated(old_lines, plan.changed, plan.trees, added, dropped)
            if len(lines) == compared.get("files") and len(hashed) == len(to_hash):
                stats.update(files=len(lines), hashed_files=len(known) + len(hashed), deleted_files=gone)
                # Only the listed paths can differ from the previous snapshot: the fetch wrote nothing else.
                self.made = _Made(plan.changed, changes.Sums(lines, known={n: e[0] for n, e in added.items()}),
                                  changes.Sums(old_lines, known=dropped), {**known, **hashed}, len(old_lines))
                return lines
        log.warning("snapshot.manifest_walk", reason="the files do not match the compare's count")
        old = self._previous_manifest(previous, old_lines) if old_lines is not None else None
        checksums, hashed_now = manifest.by_inode(self.staging, previous_dir, old, known, abandoned)
        stats.update(_walked(checksums, old, known, hashed_now))
        self.made = _Made(plan.changed, changes.Sums(parsed=checksums), changes.Sums(parsed=old), known,
                          len(old or ()))
        return manifest.sorted_lines(checksums)


@dataclass(frozen=True)
class _Made:
    """How a run made its new tree, as far as its change record needs: the
    paths it may have changed (None: compare the whole trees), both trees'
    checksums, the files it hashed, and the previous snapshot's file count
    (None: a first snapshot)."""

    candidates: list[bytes] | None
    new_sums: changes.Sums
    old_sums: changes.Sums
    hashed: dict[bytes, manifest.Hashed]
    files_before: int | None
    listed: list[tuple[bytes, str]] | None = None  # a first pull's entries (path, type), as rsync made them


class _SourceMoved(SnapshotFailed):
    """The list could not be copied: the source changed after it was made."""


class _Plan:
    """What an incremental snapshot changes in the linked copy, from the
    compare's itemized list."""

    def __init__(self, changes: list[rsync.Item], refetch: Iterable[bytes] = ()):
        self.deleted = [item.name for item in changes if item.update == "*"]
        kept = [item for item in changes if item.update != "*"]
        # Entries to copy from the source: every changed one, and the other
        # name of a new hard link (rsync links only names it transfers).
        fetch = {item.name for item in kept} | {item.linked_to for item in kept if item.linked_to is not None}
        self.directories = {item.name for item in kept if item.type == "d"}
        self.files = [item.name for item in kept if item.type == "f"]
        # Same data, other attributes: given a private copy before the fetch.
        self.attributes_only = [item.name for item in kept if item.update == "." and item.type == "f"
                                and not item.is_new]
        # Every path whose manifest entry may change, and the trees under the
        # ones that are no directory (any more).
        self.changed = sorted(fetch | set(self.deleted))
        self.trees = sorted({*self.deleted, *(fetch - self.directories)})
        gone = set(self.trees)
        # Damaged copies of the previous snapshot, fetched again in a pass of
        # their own (without --link-dest, which would link or copy them
        # again), unless the source no longer has them where they were.
        self.refetch = sorted(name for name in set(refetch) - self.directories - set(self.deleted)
                              if not any(a in gone for a in _ancestors(name)))
        self.changed = sorted({*self.changed, *self.refetch})
        self.files += [name for name in self.refetch if name not in fetch]
        # Never a private copy of a damaged one: the refetch pass writes it anew.
        self.attributes_only = [name for name in self.attributes_only if name not in set(self.refetch)]
        # The directories holding what is removed or added, so that rsync sets
        # their times again; none under something that is no directory now.
        parents = set()
        for name in self.changed:
            while b"/" in name:
                name = name.rsplit(b"/", 1)[0]
                parents.add(name)
        parents = {p for p in parents if not any(a in gone for a in _self_and_ancestors(p))}
        # The type of every entry the fetch lists, as the compare saw it.
        self.types = {name: "d" for name in parents} | {item.name: item.type for item in kept}
        # Never ".": rsync would copy what is in it. The top directory gets
        # its attributes in a pass of its own, when the compare lists it or
        # an entry in it changes (clearing and copying change its mtime; the
        # compare sees a change within the same second as none).
        self.root = b"." in self.directories or any(b"/" not in name for name in self.changed if name != b".")
        self.fetch = sorted((fetch | parents) - {b"."} - set(self.refetch))
        self.changed = [name for name in self.changed if name != b"."]

    def clear(self, root: Path, previous: Path) -> set[bytes]:
        """Remove from the linked copy what the fetch replaces and what is
        gone; put a private copy of the previous snapshot's data where only
        attributes changed. Returns the names so copied."""
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name in self.changed:
                _remove_entry(root_fd, name, keep_directory=name in self.directories)
            previous_fd = os.open(previous, os.O_RDONLY | os.O_DIRECTORY)
            try:
                return {name for name in self.attributes_only if _private_copy(previous_fd, root_fd, name)}
            finally:
                os.close(previous_fd)
        finally:
            os.close(root_fd)

    def moved(self, fetched: list[rsync.Item]) -> bytes | None:
        """The first entry the fetch found a directory where the compare saw
        none, or none where it saw one (rsync reports what it found, whatever
        it could write), if any: a directory swapped for a symlink, or a
        directory the copy would make without the contents the compare
        listed. A file that became a symlink meanwhile is just taken as such."""
        for item in fetched:
            expected = self.types.get(item.name)
            if expected is not None and (expected == "d") != (item.type == "d"):
                return item.name
        return None


def _private_copy(previous_fd: int, root_fd: int, name: bytes) -> bool:
    """name as a new inode in the staging tree with the previous snapshot's
    data (holes kept) and mtime, readable by us alone until rsync gives it its
    attributes; False where there is nothing to copy (not a regular file, or
    no directory for it any more)."""
    try:
        source = manifest.open_beneath(previous_fd, name, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        st = os.fstat(source)
        if not stat.S_ISREG(st.st_mode):
            return False
        try:
            target = manifest.open_beneath(root_fd, name, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        except OSError:
            return False
        try:
            copy_sparse(source, target)
            os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        except BaseException:
            _remove_entry(root_fd, name, keep_directory=True)
            raise
        finally:
            os.close(target)
    finally:
        os.close(source)
    return True


def _remove_entries(root: Path, names: set[bytes]) -> None:
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in names:
            _remove_entry(root_fd, name, keep_directory=True)
    finally:
        os.close(root_fd)


def _holes_again(root: Path, link_dests: list[Path], names: list[bytes]) -> None:
    """rsync copies a file it found in a link-dest under other attributes by
    writing every byte: punch that file's holes back into the copy."""
    fds = []
    try:
        for directory in [root, *link_dests]:
            fds.append(os.open(directory, os.O_RDONLY | os.O_DIRECTORY))
        root_fd, *basis_fds = fds
        for name in names:
            try:
                fd = manifest.open_beneath(root_fd, name, os.O_RDWR | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                st = os.fstat(fd)
                if stat.S_ISREG(st.st_mode) and (basis := _basis(basis_fds, name, st)) is not None:
                    try:
                        punch_holes_like(basis, fd)
                    finally:
                        os.close(basis)
                    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))  # punching a hole is a write
            finally:
                os.close(fd)
    finally:
        for fd in fds:
            os.close(fd)


def _basis(link_dest_fds: list[int], name: bytes, st: os.stat_result) -> int | None:
    """An fd of the file rsync copied name from: the first link-dest's regular
    file of that name with its size and mtime (rsync's quick check)."""
    for link_dest_fd in link_dest_fds:
        try:
            fd = manifest.open_beneath(link_dest_fd, name, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            continue
        other = os.fstat(fd)
        if stat.S_ISREG(other.st_mode) and (other.st_size, other.st_mtime_ns) == (st.st_size, st.st_mtime_ns):
            return fd
        os.close(fd)
    return None


def _self_and_ancestors(name: bytes):
    yield name
    while b"/" in name:
        name = name.rsplit(b"/", 1)[0]
        yield name


def _ancestors(name: bytes) -> list[bytes]:
    return list(_self_and_ancestors(name))[1:]


def _remove_entry(root_fd: int, name: bytes, keep_directory: bool) -> None:
    try:
        parent, base = manifest.open_parent(root_fd, name)
    except (FileNotFoundError, NotADirectoryError):
        return  # under something already removed
    try:
        st = os.stat(base, dir_fd=parent, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(base, dir_fd=parent)
        elif not keep_directory:
            shutil.rmtree(base, dir_fd=parent)
    except FileNotFoundError:
        pass
    finally:
        os.close(parent)


def remove_leftovers(host_dir: HostDir, prefix: str = LIST_PREFIX) -> None:
    """Remove the files of meta/ named prefix… that a run which died left
    (--files-from lists; a replica's manifests being fetched): one run per
    host at a time, so none is in use."""
    try:
        names = [e.name for e in os.scandir(host_dir.meta) if e.name.startswith(prefix)]
    except FileNotFoundError:
        return
    for name in names:
        (host_dir.meta / name).unlink(missing_ok=True)


class _Hasher:
    """Hashes the files rsync writes while it writes the next ones, on a
    thread of its own at a lower priority than rsync. rsync itemizes a file
    before it is renamed into place (over SSH just before, from a local
    sender well before), so each is hashed a moment after it was itemized,
    and retried a few times if it is not there yet. What is queued when rsync
    ends is hashed then on every core; what is still missing is left to the walk."""

    LAG = 0.05  # seconds between tries; a local sender itemizes up to a few tenths ahead
    TRIES = 6

    def __init__(self, root: Path, previous: Path | None = None):
        self.root = root
        # With a previous snapshot: the entropy sample of a file that replaces one
        # of its files, and of that file too when the new one looks random.
        self.previous = previous
        self.queue: collections.deque[tuple[float, bytes, int, bool]] = collections.deque()
        self.results: dict[bytes, manifest.Hashed] = {}
        self.ended = threading.Event()  # rsync is done: take nothing new from the queue
        self.abandoned = threading.Event()  # the run failed: stop, even within a file
        self.cpu_s = 0.0  # the thread's CPU time, once it has ended
        self.worker = threading.Thread(target=self._work, name="bkd-hasher", daemon=True)
        self.worker.start()

    def on(self, item: rsync.Item) -> None:
        if item.wrote_file:
            self.queue.append((time.monotonic() + self.LAG, item.name, self.TRIES,
                               self.previous is not None and not item.is_new))

    def _work(self) -> None:
        # Behind rsync for the CPU: what is left when it ends is hashed then, on every core.
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except OSError:
            pass
        root_fd = previous_fd = None
        try:
            while not self.ended.is_set():
                if not self.queue:
                    self.ended.wait(0.05)
                    continue
                due, name, tries, sample = self.queue[0]
                if due > time.monotonic():
                    self.ended.wait(min(due - time.monotonic(), 0.05))
                    continue
                self.queue.popleft()
                if root_fd is None:
                    try:
                        root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)  # rsync creates it
                    except FileNotFoundError:
                        continue
                result = manifest.hash_file(root_fd, name, self.abandoned, sample)
                if result is not None and entropy.looks_random(result.entropy):
                    if previous_fd is None:
                        previous_fd = manifest.open_dir(self.previous)  # -1 if it cannot be opened
                    if previous_fd >= 0:
                        result = result._replace(was=anomaly.sample_at(previous_fd, name, entropy.ORDINARY))
                if result is not None:
                    self.results[name] = result
                elif tries > 1:
                    self.queue.append((time.monotonic() + self.LAG, name, tries - 1, sample))
        finally:
            for fd in (root_fd, previous_fd):
                if fd is not None and fd >= 0:
                    os.close(fd)
            self.cpu_s = time.thread_time()

    async def finish(self) -> dict[bytes, manifest.Hashed]:
        """rsync has ended: hash what is still queued, on every core."""
        self.ended.set()
        await asyncio.to_thread(self.worker.join)
        left = [name for _due, name, _tries, _sample in self.queue if name not in self.results]
        sampled = {name for _due, name, _tries, sample in self.queue if sample}
        self.queue.clear()
        if left and self.root.exists():
            self.results.update(await asyncio.to_thread(manifest.hash_files, self.root, left, 2, self.abandoned,
                                                        sampled))
        return self.results

    def close(self) -> None:
        """Let the thread go, without waiting for it on the event loop: it
        stops within a chunk, and what it was doing is no longer wanted."""
        self.ended.set()
        self.abandoned.set()


class _Estimate:
    """Progress while the compare runs, when rsync prints only its itemized
    list: the share of the previous snapshot's files (in path order) up to
    the last change listed. No data moves yet (bytes 0)."""

    EVERY = 0.5  # seconds between reports

    def __init__(self, on_progress):
        self.old_lines: list[bytes] = []  # the previous manifest, once read
        self.last: bytes | None = None  # the last change listed
        self.on_progress = on_progress
        self.fraction = 0.0
        self.started = time.monotonic()
        self.reported = 0.0

    def knows(self, old_lines: list[bytes] | None) -> None:
        self.old_lines = old_lines or []

    def at(self, name: bytes) -> None:
        self.last = name  # placed in the manifest only when a report is due: a search per change costs
        self.report()

    def report(self, final: bool = False) -> None:
        now = time.monotonic()
        if not self.on_progress or (not final and now - self.reported < self.EVERY):
            return
        if self.old_lines and self.last is not None:
            self.fraction = max(self.fraction, manifest.position(self.old_lines, self.last))
        self.reported = now
        elapsed = now - self.started
        percent = 100 if final else min(int(self.fraction * 100), 99)
        eta = 0 if final else (round(elapsed * (1 / self.fraction - 1)) if self.fraction > 0 else None)
        self.on_progress({"percent": percent, "bytes": 0, "rate": 0, "eta_s": eta, "phase": "compare"})

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


def _headline(assessment: anomaly.Assessment) -> dict:
    """The profile's headline for the snapshot's log line."""
    numbers = assessment.numbers
    return {"profile": f"new {numbers['new']}, changed {numbers['changed']}, deleted {numbers['deleted']}, "
                       f"became random {numbers['became_random']}",
            "suspect": bool(assessment.verdict and assessment.verdict["suspect"])}


def _add_refetched(stats: dict, refetched: dict) -> None:
    """The statistics of a refetch pass into the run's: its bytes moved, and how many files it took."""
    if refetched:
        stats["refetched_files"] = refetched["refetched_files"]
        for key in ("transferred_bytes", "received_bytes"):
            stats[key] = stats.get(key, 0) + refetched.get(key, 0)


def _walked(checksums: manifest.Manifest, old: manifest.Manifest | None, known: dict, hashed_now: int) -> dict:
    """The statistics of a manifest made by walking the tree."""
    return {"files": len(checksums), "hashed_files": len(known) + hashed_now,
            "deleted_files": sum(path not in checksums for path in old or ())}


async def _hashing(func, *args):
    """func(*args, abandoned) on a worker thread. If the run is cancelled
    meanwhile, the hashing stops within a chunk: a stop does not wait for a
    result nobody will use."""
    abandoned = threading.Event()
    try:
        return await asyncio.to_thread(func, *args, abandoned)
    except asyncio.CancelledError:
        abandoned.set()
        raise


async def _together(*work):
    """Await all of work; when one fails, stop the others before raising its
    error (gather alone would leave them running: a cp -al outliving its
    failed run, rebuilding the staging directory the run had removed)."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()  # nothing for those that have finished
        await asyncio.gather(*tasks, return_exceptions=True)


def _complete(host_dir: HostDir, staging: Path, name: SnapshotName, stats: dict, interrupted: list[Path],
              checksums: list[bytes], expected: list[bytes] | None, previous: SnapshotName | None,
              assessment: anomaly.Assessment, hold: bool) -> tuple[SnapshotName, list[dict]]:
    """Staging → complete snapshot. The rename is the commit point: before it the
    tree, its manifest, its change record, its record (with the change profile
    and the anomaly verdict) and, for a suspect snapshot, the host's hold are
    on disk; after it `latest` is switched atomically. With expected (a copy
    of another server's snapshot), the tree is checked against it first, and
    it is the manifest kept: `verify` then finds what this check found."""
    if (host_dir.hourly / str(name)).exists():  # a copy keeps its given name: never over a complete one
        raise FileExistsError(errno.EEXIST, "a complete snapshot has that name", str(host_dir.hourly / str(name)))
    mismatches = []
    if expected is not None:
        mismatches = manifest.differences(checksums, expected)
        checksums = expected
        stats["mismatched_files"] = len(mismatches)
    meta_file = host_dir.meta_file(name)
    manifest_file = host_dir.manifest_file(name)
    changes_file = host_dir.changes_file(name)
    verdict = assessment.verdict
    suspect = bool(verdict and verdict["suspect"])
    try:
        # Not fsynced one by one: the syncfs below flushes them with the tree.
        writing = time.monotonic()
        manifest.write_lines(manifest_file, checksums, sync=False)
        stats["manifest_s"] = round(stats.get("manifest_s", 0) + time.monotonic() - writing, 3)
        writing = time.monotonic()
        changes.write(changes_file, str(previous) if previous else None, assessment.found, sync=False,
                      made=assessment.lines)
        stats.update(profile=assessment.numbers, anomaly=verdict,
                     anomaly_s=round(stats.get("anomaly_s", 0) + time.monotonic() - writing, 3))
        record = {"name": str(name), "time": name.time.isoformat(), **stats, "examples": assessment.names}
        write_atomic(meta_file, json.dumps(record, indent=1).encode(), sync=False)
        if suspect:
            holds.add(host_dir, {"snapshot": str(name), "signals": verdict["signals"],
                                 "examples": assessment.names}, hold, clock.iso(clock.now()), sync=False)
        syncfs(staging)
        staging.rename(host_dir.hourly / str(name))
    except OSError:
        for record_file in (meta_file, manifest_file, changes_file):
            record_file.unlink(missing_ok=True)
        if suspect:
            holds.drop(host_dir, str(name))
        raise
    fsync_dir(host_dir.hourly)
    replace_symlink(host_dir.latest, f"hourly/{name}")
    # The interrupted runs' files now live on in this snapshot.
    for partial in interrupted:
        shutil.rmtree(partial, ignore_errors=True)
    return name, mismatches


async def _remove(path: Path) -> None:
    await asyncio.to_thread(shutil.rmtree, path, ignore_errors=True)
