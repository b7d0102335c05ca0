"""The notification outbox (SPEC §8): every notification is a row until it is
delivered or given up, so delivery is at least once across restarts; each
sink's state (last delivery, last error, counters) beside it."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .store import Store

KEEP_FINISHED_S = 7 * 86400  # delivered and failed rows are kept a week for `notify` and debugging


class OutboxStore:
    def __init__(self, store: Store):
        self.store = store

    async def enqueue(self, items: list[dict], episode: dict | None = None) -> None:
        """Queue notifications (and record on the episode that they were queued)
        in one transaction. An item: key, sink, event, episode_id, alert,
        created, created_s, next_attempt. A key already queued is not queued again."""
        async with self.store.transaction() as db:
            await db.executemany(
                "INSERT OR IGNORE INTO outbox (key, sink, event, episode_id, alert, created, created_s, "
                "next_attempt) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(i["key"], i["sink"], i["event"], i["episode_id"], json.dumps(i["alert"]), i["created"],
                  i["created_s"], i["next_attempt"]) for i in items])
            if episode is not None:  # only what was sent: the rest of the episode may have moved on
                await db.execute("UPDATE episodes SET notified=?, reminded=?, reminders=? WHERE id=?",
                                 (episode["notified"], episode["reminded"], episode["reminders"], episode["id"]))

    async def heads(self, exclude_ids: set[int], exclude_sinks: set[str], limit: int) -> list[dict]:
        """The oldest pending notification of each (sink, episode) — later ones
        wait for it, so each alert's notifications arrive in order — soonest
        due first, leaving out those in flight and sinks at their limit."""
        ids = ",".join("?" * len(exclude_ids))
        sinks = ",".join("?" * len(exclude_sinks))
        rows = await self.store.fetch(
            f"SELECT * FROM outbox AS o WHERE state='pending' AND id NOT IN ({ids}) AND sink NOT IN ({sinks}) "
            "AND id = (SELECT MIN(id) FROM outbox WHERE state='pending' AND sink=o.sink "
            "          AND episode_id IS o.episode_id) "
            "ORDER BY next_attempt, id LIMIT ?", (*exclude_ids, *exclude_sinks, limit))
        return [{**dict(row), "alert": json.loads(row["alert"])} for row in rows]

    async def delivered(self, row_id: int, sink: str, attempts: int, now: str) -> None:
        async with self.store.transaction() as db:
            await db.execute("UPDATE outbox SET state='delivered', attempts=?, finished=?, last_error=NULL "
                             "WHERE id=?", (attempts, now, row_id))
            await db.execute("INSERT INTO sinks (name, last_delivery, failing, delivered) VALUES (?, ?, 0, 1) "
                             "ON CONFLICT(name) DO UPDATE SET last_delivery=excluded.last_delivery, failing=0, "
                             "delivered=delivered+1", (sink, now))

    async def failed(self, row_id: int, sink: str, attempts: int, error: str, now: str,
                     next_attempt: float | None) -> int:
        """An attempt failed: retry at next_attempt, or (None) give the row up.
        Returns how many attempts of this sink have failed in a row."""
        async with self.store.transaction() as db:
            if next_attempt is None:
                await db.execute("UPDATE outbox SET state='failed', attempts=?, last_error=?, finished=? "
                                 "WHERE id=?", (attempts, error, now, row_id))
            else:
                await db.execute("UPDATE outbox SET attempts=?, last_error=?, next_attempt=? WHERE id=?",
                                 (attempts, error, next_attempt, row_id))
            given_up = int(next_attempt is None)
            await db.execute(
                "INSERT INTO sinks (name, last_error, last_error_at, failing, failed) VALUES (?, ?, ?, 1, ?) "
                "ON CONFLICT(name) DO UPDATE SET last_error=excluded.last_error, "
                "last_error_at=excluded.last_error_at, failing=failing+1, failed=failed+?",
                (sink, error, now, given_up, given_up))
            rows = await db.execute_fetchall("SELECT failing FROM sinks WHERE name=?", (sink,))
        return rows[0]["failing"]

    async def record_attempt(self, sink: str, error: str | None, now: str) -> None:
        """A delivery outside the outbox (a test message) still tells the sink's state."""
        async with self.store.transaction() as db:
            if error is None:
                await db.execute("INSERT INTO sinks (name, last_delivery) VALUES (?, ?) ON CONFLICT(name) "
                                 "DO UPDATE SET last_delivery=excluded.last_delivery, failing=0", (sink, now))
            else:
                await db.execute("INSERT INTO sinks (name, last_error, last_error_at, failing) VALUES (?, ?, ?, 1) "
                                 "ON CONFLICT(name) DO UPDATE SET last_error=excluded.last_error, "
                                 "last_error_at=excluded.last_error_at, failing=failing+1", (sink, error, now))

    async def sinks(self) -> dict[str, dict]:
        """Each sink's state with its queue length."""
        states = {row["name"]: {**dict(row), "queued": 0} for row in await self.store.fetch("SELECT * FROM sinks")}
        for row in await self.store.fetch(
                "SELECT sink, COUNT(*) AS n FROM outbox WHERE state='pending' GROUP BY sink"):
            states.setdefault(row["sink"], {"name": row["sink"], "last_delivery": None, "last_error": None,
                                            "last_error_at": None, "failing": 0, "delivered": 0,
                                            "failed": 0})["queued"] = row["n"]
        return states

    async def prune(self, before: str) -> None:
        async with self.store.transaction() as db:
            await db.execute("DELETE FROM outbox WHERE state != 'pending' AND finished < ?", (before,))

    async def history(self, sink: str | None = None) -> list[dict]:
        """Every row, oldest first (for tests and debugging)."""
        rows = await self.store.fetch("SELECT * FROM outbox WHERE ? IS NULL OR sink=? ORDER BY id",
                                      (sink, sink))
        return [{**dict(row), "alert": json.loads(row["alert"])} for row in rows]
