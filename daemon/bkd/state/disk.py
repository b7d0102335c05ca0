"""Samples of the backup root's disk usage, for the growth trend of the
`disk` alert (SPEC §8); kept a few weeks."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .store import Store


class DiskStore:
    def __init__(self, store: Store):
        self.store = store

    async def add_sample(self, sample: dict, keep_after: str) -> None:
        async with self.store.transaction() as db:
            await db.execute("INSERT OR REPLACE INTO disk_samples (time, used_bytes, free_bytes, used_inodes, "
                             "free_inodes) VALUES (:time, :used_bytes, :free_bytes, :used_inodes, :free_inodes)",
                             sample)
            await db.execute("DELETE FROM disk_samples WHERE time < ?", (keep_after,))

    async def samples(self) -> list[dict]:
        """Oldest first."""
        return [dict(row) for row in await self.store.fetch("SELECT * FROM disk_samples ORDER BY time")]
