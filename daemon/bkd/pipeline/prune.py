"""Applying retention: snapshots to delete are renamed into the host's trash
(atomic), and the trash is emptied in the background at idle I/O priority."""

from __future__ import annotations

import asyncio
import os
import shutil
from datetime import datetime
from pathlib import Path

import structlog

from .. import exec as bkexec
from ..config.models import Retention
from ..fsutil import fsync_dir, make_private_dir
from ..layout import HostDir
from ..retention import Decision, plan

log = structlog.get_logger()


def host_plan(host_dir: HostDir, policy: Retention, now: datetime) -> list[Decision]:
    latest = host_dir.latest_snapshot()
    return plan(host_dir.hourly_names(), now, policy, latest=str(latest) if latest else None)


def move_to_trash(host_dir: HostDir, decisions: list[Decision]) -> list[str]:
    """Rename each snapshot marked delete (and its meta record) into the trash."""
    doomed = [d.snapshot for d in decisions if d.action == "delete"]
    if not doomed:
        return []
    make_private_dir(host_dir.trash)
    for name in doomed:
        os.rename(host_dir.hourly / name, host_dir.trash / name)
        for record in (host_dir.meta_file(name), host_dir.manifest_file(name)):
            if record.exists():
                os.rename(record, host_dir.trash / record.name)
    fsync_dir(host_dir.hourly)
    fsync_dir(host_dir.trash)
    return doomed


class TrashCollector:
    """One background task for the whole backup root, so deletions never compete
    with each other; `ionice -c3` keeps them out of the snapshots' way."""

    def __init__(self, backup_root: Path):
        self.backup_root = backup_root
        self.wake = asyncio.Event()
        self.current: str | None = None

    def pending(self) -> list[str]:
        try:
            hosts = [e for e in os.scandir(self.backup_root) if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return []
        items = []
        for host in hosts:
            trash = Path(host.path) / ".trash"
            if trash.is_dir():
                items += sorted(f"{host.name}/{entry.name}" for entry in os.scandir(trash))
        return items

    async def run(self) -> None:
        ionice = shutil.which("ionice")
        while True:
            self.wake.clear()
            items = self.pending()
            if not items:
                await self.wake.wait()
                continue
            progress = False
            for item in items:
                self.current = item
                host, name = item.split("/", 1)
                argv = ["rm", "-rf", "--", str(self.backup_root / host / ".trash" / name)]
                result = await bkexec.run([ionice, "-c", "3", *argv] if ionice else argv)
                if result.returncode == 0:
                    progress = True
                    log.info("trash.deleted", item=item)
                else:
                    log.error("trash.delete_failed", item=item, error=result.stderr)
            self.current = None
            if not progress:  # nothing would delete: retry later, not in a busy loop
                try:
                    await asyncio.wait_for(self.wake.wait(), 300)
                except asyncio.TimeoutError:
                    pass
