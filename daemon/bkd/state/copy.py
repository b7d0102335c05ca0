"""The state database's copy in the backup root (SPEC §4 `.bkd-state/`):
job history, alerts and the audit chain live only in the SQLite file under
`state_dir`, which no backup holds (bkd never backs up its own directories).
So every bkd server keeps a consistent copy of it at
`{backup_root}/.bkd-state/bkd.sqlite` — SQLite's online backup, taken
between transactions — written at start and then after changes, at most
every `[history] copy_every`; a replica pulls it with the snapshots
(replica/upstreams.py) and keeps it in dated generations. The primary
stores nothing of its replicas for this: they read it."""

from __future__ import annotations

import asyncio

import structlog

from ..config.runtime import Runtime
from ..infra.fsutil import make_private_dir
from ..tree.layout import state_copy_dir
from .store import Store

log = structlog.get_logger()

COPY_NAME = "bkd.sqlite"


class StateCopy:
    """The `state-copy` loop (supervised)."""

    def __init__(self, runtime: Runtime, store: Store):
        self.runtime = runtime
        self.store = store
        self.copied_at: int | None = None  # the store's change count the last copy holds

    async def write(self) -> None:
        backup_root = self.runtime.config.backup_root
        directory = state_copy_dir(backup_root)
        changes = await self.store.changes()
        await asyncio.to_thread(make_private_dir, directory, backup_root)
        await self.store.copy_to(directory / COPY_NAME)
        self.copied_at = changes
        log.info("state.copied", path=str(directory / COPY_NAME))

    async def run(self) -> None:
        while True:
            if await self.store.changes() != self.copied_at:
                await self.write()
            await asyncio.sleep(self.runtime.config.history.copy_every.total_seconds())
