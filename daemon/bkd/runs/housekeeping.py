"""Keeping the backup root tidy: retention (one prune of a host at a time,
never of a snapshot running work reads), expiry of archives and monthly
copies, crash leftovers, and the trash collector that deletes in the
background."""

from __future__ import annotations

import asyncio
import shutil

import structlog

from ..config.models import Config, Retention
from ..infra import clock
from ..infra.fsutil import make_private_dir
from ..pipeline import archive
from ..pipeline.prune import TrashCollector, host_plan, move_to_trash
from ..state.store import STORE_ERRORS, Store
from ..tree.layout import HostDir
from .plan import Lane
from .registry import Registry

log = structlog.get_logger()


class Housekeeping:
    def __init__(self, backup_root, store: Store, registry: Registry, refresh):
        self.store = store
        self.registry = registry
        self.refresh = refresh  # refresh(host): the read model re-reads that host's directory
        self.collector = TrashCollector(backup_root)
        self._locks: dict[str, asyncio.Lock] = {}
        self.on_pruned: list = []  # await listener(host_dir) after copies went (snapshots, archives, monthly copies)

    def _lock(self, host: str) -> asyncio.Lock:
        return self._locks.setdefault(host, asyncio.Lock())

    async def prune(self, host_dir: HostDir, policy: Retention, dry_run: bool) -> list[dict]:
        """Apply (or with dry_run, only explain) a host's retention policy.
        Prunes of one host never overlap: a manual prune racing a run's own
        prune stage waits for it, then finds nothing left to do."""
        host = host_dir.root.name
        async with self._lock(host):
            decisions = await asyncio.to_thread(host_plan, host_dir, policy, clock.now(),
                                                self.registry.pinned(host))
            if not dry_run:
                doomed = await asyncio.to_thread(move_to_trash, host_dir, decisions)
                if doomed:
                    log.info("prune.trashed", host=host, snapshots=len(doomed))
                    self.collector.wake.set()
                    self.refresh(host)
                    try:
                        await self.store.snapshots.forget(host, doomed)
                    except STORE_ERRORS as e:  # the filesystem is the truth; the rows go next time
                        log.warning("store.forget_failed", host=host, error=str(e))
                    await self._pruned(host_dir)
        return [d.as_dict() for d in decisions]

    async def _pruned(self, host_dir: HostDir) -> None:
        for listener in self.on_pruned:
            try:
                await listener(host_dir)
            except Exception:  # a listener's failure must not fail the prune
                log.exception("prune.listener_failed", host=host_dir.root.name)

    async def clear_heavy_leftovers(self, host_dir: HostDir) -> None:
        """Partial archives and monthly copies of the host, left by a crash or a
        kill. Called at start and before each heavy stage: the caller holds the
        host's heavy lane (or nothing runs yet), so no live partial is touched."""
        leftovers = await asyncio.to_thread(archive.heavy_leftovers, host_dir)
        for path in leftovers:
            log.warning("heavy.leftover_removed", path=str(path))
            if path.is_dir():  # a monthly copy's hardlink tree: delete it in the background
                await asyncio.to_thread(_trash, host_dir, path)
                self.collector.wake.set()
            else:
                path.unlink(missing_ok=True)

    async def expire_monthly(self, host_dir: HostDir, keep_months: int) -> None:
        if await asyncio.to_thread(archive.expire_monthly, host_dir, keep_months, clock.now()):
            self.collector.wake.set()
            await self._pruned(host_dir)

    async def expire(self, config: Config) -> None:
        """Expire archives and monthly copies of every host on schedule, whether
        or not new ones are being made; hosts with heavy work running are left
        for the next pass."""
        now = clock.now()
        for name, settings in config.hosts.items():
            if self.registry.busy_run(name, Lane.HEAVY):
                continue
            host_dir = HostDir.of(config.backup_root, name)
            try:
                expired = await asyncio.to_thread(archive.expire_archives, host_dir,
                                                  settings.archive.keep_days, now)
                await self.expire_monthly(host_dir, config.monthly.keep_months)
            except OSError as e:  # this host's problem, reported by its own runs
                log.warning("expire.failed", host=name, error=f"{e.filename}: {e.strerror}")
                continue
            if expired:
                log.info("archives.expired", host=name, archives=len(expired))
                self.refresh(name)
                await self._pruned(host_dir)


def _trash(host_dir: HostDir, path) -> None:
    make_private_dir(host_dir.trash, under=host_dir.root.parent)
    try:
        path.rename(host_dir.trash / f"leftover-{path.parent.name}-{path.name}")
    except OSError:
        shutil.rmtree(path, ignore_errors=True)
