"""The directory a restore sends from. An hourly snapshot or a monthly copy
is one already; an archive is not, so what was asked (PATH, the directories
above it and what its hard links point at) is extracted first into a
private staging directory under the host's `.restore/`, and sent from there
like any restore — the same checks, receivers, DEST rules, dry run,
progress and cancel. The staging directory is removed when the restore
ends, however it ends; one a crash left behind is removed by the host's
next restore (a host has one restore at a time: its restore lane)."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import structlog

from ..infra.errors import DomainError
from ..infra.fsutil import make_private_dir
from ..pipeline import tarstream
from ..tree import browse, copies
from ..tree.layout import HostDir
from .transfer import RestoreFailed

log = structlog.get_logger()


@asynccontextmanager
async def sending_root(host_dir: HostDir, copy: copies.Copy, path: str,
                       on_progress: Callable[[dict], None] | None = None) -> AsyncIterator[Path]:
    """The directory holding PATH of copy as the copy has it, for the restore's
    rsync to send from. An archive's extraction reports progress (phase
    `extract`: how far through the part of the stream that holds PATH)."""
    if copy.kind != copies.ARCHIVE:
        yield copy.path
        return
    try:
        tree = await tarstream.tree_of(copy)
        ranges = tree.ranges(browse.components(path))
    except DomainError as e:
        raise RestoreFailed(e.message) from None
    await asyncio.to_thread(_clear, host_dir.restoring)
    staging = host_dir.restoring / secrets.token_hex(6)
    make_private_dir(staging, under=host_dir.root.parent)  # 0700: tar gives root/ the archive root's mode
    root = staging / "root"
    os.mkdir(root, 0o700)
    try:
        started = time.monotonic()

        def extracting(done: int, total: int) -> None:
            if on_progress is not None:
                rate = done / max(time.monotonic() - started, 1e-3)
                on_progress({"percent": min(99, done * 100 // total) if total else None, "bytes": done,
                             "rate": round(rate), "eta_s": round((total - done) / rate) if rate else None,
                             "phase": "extract"})

        try:
            read = await tarstream.extract(copy.archive, ranges, root, extracting)
        except tarstream.ArchiveUnreadable as e:
            raise RestoreFailed(f"cannot extract from {copy.ref}: {e}") from None
        log.info("restore.extracted", archive=copy.archive.name, bytes_read=read, ranges=len(ranges))
        yield root
    finally:
        await asyncio.to_thread(shutil.rmtree, staging, True)


def _clear(restoring: Path) -> None:
    """Staging directories left by a restore that did not end (a crash)."""
    try:
        leftovers = list(os.scandir(restoring))
    except FileNotFoundError:
        return
    for entry in leftovers:
        log.warning("restore.leftover_removed", path=entry.path)
        shutil.rmtree(entry.path, ignore_errors=True)
