"""Applying retention: snapshots to delete are renamed into the host's trash
(atomic), and the trash is emptied in the background at idle I/O priority."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from datetime import datetime
from pathlib import Path

import structlog

from ..config.models import Retention
from ..infra import exec as bkexec
from ..infra.fsutil import fsync_dir, make_private_dir
from ..infra.supervise import woken
from ..tree import holds
from ..tree.layout import HostDir
from .retention import Decision, plan

log = structlog.get_logger()


BATCH = 500  # trashed trees per `rm -rf`: one process for many, not one each


def host_plan(host_dir: HostDir, policy: Retention, now: datetime, pinned: set[str] = frozenset()) -> list[Decision]:
    latest = host_dir.latest_snapshot()
    return plan(host_dir.hourly_names(), now, policy, latest=str(latest) if latest else None, pinned=pinned,
                held=holds.is_held(host_dir))


def move_to_trash(host_dir: HostDir, decisions: list[Decision]) -> list[str]:
    """Rename each snapshot marked delete (and its meta records) into the
    trash; one that is already gone (another prune got there first) is skipped.
    Nothing moves once the host is held, whatever the plan said: a hold may
    have come since it was made."""
    doomed = [d.snapshot for d in decisions if d.action == "delete"]
    if not doomed or holds.is_held(host_dir):
        return []
    make_private_dir(host_dir.trash, under=host_dir.root.parent)
    moved = []
    for name in doomed:
        try:
            os.rename(host_dir.hourly / name, host_dir.trash / name)
        except FileNotFoundError:
            continue
        moved.append(name)
        for record in (host_dir.meta_file(name), host_dir.manifest_file(name), host_dir.changes_file(name)):
            with contextlib.suppress(FileNotFoundError):
                os.rename(record, host_dir.trash / record.name)
    fsync_dir(host_dir.hourly)
    fsync_dir(host_dir.trash)
    return moved


class TrashCollector:
    """One background task for the whole backup root, so deletions never compete
    with each other; `ionice -c3` keeps them out of the snapshots' way, and one
    `rm -rf` takes many trees at once."""

    def __init__(self, backup_root: Path):
        self.backup_root = backup_root
        self.wake = asyncio.Event()
        self.queue: list[str] = []  # host/name of what waits in the hosts' .trash/, as last seen

    def pending(self) -> list[str]:
        return list(self.queue)

    def scan(self) -> list[str]:
        try:
            hosts = [e for e in os.scandir(self.backup_root) if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return []
        items = []
        for host in hosts:
            try:
                items += sorted(f"{host.name}/{entry.name}" for entry in os.scandir(Path(host.path) / ".trash"))
            except (FileNotFoundError, NotADirectoryError):
                continue
        return items

    async def run(self) -> None:
        ionice = shutil.which("ionice")
        while True:
            self.wake.clear()
            self.queue = await asyncio.to_thread(self.scan)
            if not self.queue:
                await self.wake.wait()
                continue
            attempted = self.queue
            for start in range(0, len(attempted), BATCH):
                batch = attempted[start:start + BATCH]
                argv = ["rm", "-rf", "--", *(str(self.backup_root / h / ".trash" / n)
                                            for h, n in (item.split("/", 1) for item in batch))]
                result = await bkexec.run([ionice, "-c", "3", *argv] if ionice else argv)
                if result.returncode != 0:
                    log.error("trash.delete_failed", items=len(batch), error=result.stderr[-500:])
                else:
                    log.info("trash.deleted", items=len(batch))
            self.queue = await asyncio.to_thread(self.scan)
            if set(attempted) <= set(self.queue):
                # Nothing would delete: retry later, not in a busy loop.
                await woken(self.wake, 300)
