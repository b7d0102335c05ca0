"""Compressed tar archives of a host's latest snapshot, and monthly golden copies."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import structlog

from ..config.models import Archive
from ..infra import exec as bkexec
from ..infra.clock import months_before
from ..infra.fsutil import commit_file, fsync_dir, make_private_dir, write_atomic
from ..tree import holds
from ..tree.layout import PARTIAL_PREFIX, ArchiveFile, HostDir, SnapshotName, month_name
from . import manifest, tarstream
from .linktree import link_tree

log = structlog.get_logger()

EXTENSIONS = {"gzip": ".tar.gz", "pigz": ".tar.gz", "zstd": ".tar.zst"}

# tar of the snapshot's root piped into the compressor; pipefail so a failing
# tar is not hidden by a compressor that exited 0. Arguments stay positional.
_PIPELINE = 'set -o pipefail; tar --create --file=- --directory="$1" --numeric-owner --acls --xattrs ' \
            '--sparse . | "${@:3}" > "$2"'


class StageFailed(Exception):
    """A stage after the snapshot failed; the message says why."""


def compressor_command(archive: Archive) -> list[str]:
    level = f"-{archive.level}"
    return {
        "gzip": ["gzip", level],
        "pigz": ["pigz", level],  # all cores by default
        "zstd": ["zstd", level, "-T0", "-q"],
    }[archive.compression]


async def make_archive(host_dir: HostDir, snapshot: SnapshotName, archive: Archive) -> dict:
    """Archive the complete snapshot, under a partial name renamed when complete."""
    if not (host_dir.hourly / str(snapshot)).is_dir():
        raise StageFailed(f"snapshot {snapshot} is gone")
    make_private_dir(host_dir.archives, under=host_dir.root.parent)
    name = f"{host_dir.root.name}_{snapshot}{EXTENSIONS[archive.compression]}"
    final = host_dir.archives / name
    if final.exists():
        return {"archive": name, "skipped": "an archive of this snapshot exists"}
    partial = host_dir.archives / f"{PARTIAL_PREFIX}{secrets.token_hex(4)}-{name}"
    argv = ["bash", "-c", _PIPELINE, "bkd-archive", str(host_dir.hourly / str(snapshot)), str(partial),
            *compressor_command(archive)]
    try:
        result = await bkexec.run(argv)
    except asyncio.CancelledError:
        partial.unlink(missing_ok=True)
        raise
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise StageFailed(f"archive failed (exit {result.returncode}): {result.stderr.strip()[-500:]}")
    await asyncio.to_thread(commit_file, partial, final)
    digest = await asyncio.to_thread(manifest.write_checksum, final)
    made = ArchiveFile(snapshot, final)
    await asyncio.to_thread(_link_manifest, host_dir.manifest_file(snapshot), made.manifest)
    try:
        entries = await tarstream.write_index(made)
    except tarstream.ArchiveUnreadable as e:  # the archive is whole (its checksum says so): browse builds it later
        log.warning("archive.unindexed", archive=name, error=str(e))
        entries = None
    log.info("archive.complete", archive=name, bytes=final.stat().st_size, sha256=digest, entries=entries)
    return {"archive": name, "archive_bytes": final.stat().st_size, "archive_sha256": digest}


def _link_manifest(manifest_file: Path, link: Path) -> None:
    """The snapshot's manifest, kept beside a copy made of it (a hard link:
    no second copy of a large file), so that the copy can still be verified
    once the snapshot is pruned."""
    temporary = link.with_name(f".{link.name}.tmp-{secrets.token_hex(4)}")
    try:
        os.link(manifest_file, temporary)
    except FileNotFoundError:  # a snapshot without a manifest: its copy is checked by checksum alone
        log.warning("copy.no_manifest", manifest=manifest_file.name)
        return
    os.replace(temporary, link)  # over one an earlier, failed attempt left


def expire_archives(host_dir: HostDir, keep_days: int, now: datetime) -> list[str]:
    """Remove archives older than keep_days; the newest is always kept, and
    one dated in the future is never counted as the newest. None while the
    host is held (an anomaly)."""
    if holds.is_held(host_dir):
        return []
    # One dated in the future (a clock that stepped back) must not make another look old.
    existing = [a for a in host_dir.archive_files() if a.snapshot.time <= now]
    doomed = [a for a in existing[:-1] if a.snapshot.time < now - timedelta(days=keep_days)]
    for archive in doomed:
        archive.path.unlink(missing_ok=True)
        for sidecar in archive.sidecars():
            sidecar.unlink(missing_ok=True)
    return [a.path.name for a in doomed]


# ---- monthly golden snapshots -------------------------------------------------

async def make_monthly(host_dir: HostDir, snapshot: SnapshotName, now: datetime) -> dict:
    """A hardlinked copy of the complete snapshot as monthly/YYYY-MM, made whole by one rename."""
    if not (host_dir.hourly / str(snapshot)).is_dir():
        raise StageFailed(f"snapshot {snapshot} is gone")
    name = month_name(now)
    if (host_dir.monthly / name).exists():
        return {"monthly": name, "skipped": "this month's copy exists"}
    make_private_dir(host_dir.monthly, under=host_dir.root.parent)
    partial = host_dir.monthly / f"{PARTIAL_PREFIX}{name}-{secrets.token_hex(4)}"
    try:
        failure = await link_tree(host_dir.hourly / str(snapshot), partial)
    except asyncio.CancelledError:
        await asyncio.to_thread(shutil.rmtree, partial, True)
        raise
    if failure:
        raise StageFailed(f"monthly copy failed: {failure}")
    # What the copy is, recorded before the rename that makes it whole (a copy without it is one
    # bkd made before it kept them: verified against its snapshot's manifest while that is kept).
    _link_manifest(host_dir.manifest_file(snapshot), host_dir.monthly_manifest(name))
    write_atomic(host_dir.monthly_record(name), json.dumps({"snapshot": str(snapshot)}).encode())
    os.rename(partial, host_dir.monthly / name)
    fsync_dir(host_dir.monthly)
    log.info("monthly.complete", monthly=name, snapshot=str(snapshot))
    return {"monthly": name, "monthly_of": str(snapshot)}


def expire_monthly(host_dir: HostDir, keep_months: int, now: datetime) -> list[str]:
    """Move copies older than keep_months into the trash. The newest copy not
    dated in the future is always kept. None while the host is held (an anomaly)."""
    if holds.is_held(host_dir):
        return []
    cutoff = month_name(months_before(now, keep_months))
    past = [name for name in host_dir.monthly_copies() if name <= month_name(now)]
    doomed = [name for name in past[:-1] if name < cutoff]
    if doomed:
        make_private_dir(host_dir.trash, under=host_dir.root.parent)
        for name in doomed:
            os.rename(host_dir.monthly / name, host_dir.trash / f"monthly-{name}")
            for record in (host_dir.monthly_record(name), host_dir.monthly_manifest(name)):
                with contextlib.suppress(FileNotFoundError):
                    os.rename(record, host_dir.trash / record.name)
        fsync_dir(host_dir.monthly)
    return doomed


def heavy_leftovers(host_dir: HostDir) -> list[Path]:
    """Partial archives and monthly copies: left by a crash or a kill, never
    by running work when the host's heavy lane is idle."""
    found = []
    for directory in (host_dir.archives, host_dir.monthly):
        try:
            found += [Path(e.path) for e in os.scandir(directory) if e.name.startswith(PARTIAL_PREFIX)]
        except (FileNotFoundError, NotADirectoryError):
            continue
    return found
