"""Alert episodes (SPEC §8): one row per (kind, host, subject) from the moment
a condition starts until it clears; repeats only count."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import Store

CURRENT = "state != 'resolved'"


def record_of(row) -> dict:
    record = dict(row)
    record["host"] = record["host"] or None
    record["subject"] = record["subject"] or None
    return record


class AlertStore:
    def __init__(self, store: Store):
        self.store = store

    async def touch(self, kind: str, host: str | None, subject: str | None, message: str,
                    now: str) -> tuple[dict, bool]:
        """The condition holds now: count a repeat of the current episode, or
        open one. Returns (the episode, whether it was opened now)."""
        key = (kind, host or "", subject or "")
        async with self.store.transaction() as db:
            cursor = await db.execute(
                f"UPDATE episodes SET count = count + 1, last_seen = ?, message = ? "
                f"WHERE kind=? AND host=? AND subject=? AND {CURRENT}", (now, message, *key))
            opened = cursor.rowcount == 0
            if opened:
                await db.execute(
                    "INSERT INTO episodes (kind, host, subject, state, count, message, first_seen, last_seen) "
                    "VALUES (?, ?, ?, 'open', 1, ?, ?, ?)", (*key, message, now, now))
            rows = await db.execute_fetchall(
                f"SELECT * FROM episodes WHERE kind=? AND host=? AND subject=? AND {CURRENT}", key)
        return record_of(rows[0]), opened

    async def resolve(self, kind: str, host: str | None, subject: str | None, now: str) -> list[dict]:
        """The condition cleared: end its episode (every subject's, when subject is None)."""
        where = f"kind=? AND host=? AND {CURRENT}" + (" AND subject=?" if subject is not None else "")
        params = (kind, host or "") + ((subject,) if subject is not None else ())
        async with self.store.transaction() as db:
            rows = await db.execute_fetchall(f"SELECT * FROM episodes WHERE {where}", params)
            if rows:
                await db.execute(f"UPDATE episodes SET state='resolved', resolved=? WHERE {where}",
                                 (now, *params))
        return [{**record_of(row), "state": "resolved", "resolved": now} for row in rows]

    async def current(self) -> list[dict]:
        """Open and acknowledged episodes, newest first."""
        rows = await self.store.fetch(f"SELECT * FROM episodes WHERE {CURRENT} ORDER BY id DESC")
        return [record_of(row) for row in rows]

    async def recent(self, limit: int) -> list[dict]:
        """Every episode, resolved ones included, newest first."""
        rows = await self.store.fetch("SELECT * FROM episodes ORDER BY id DESC LIMIT ?", (limit,))
        return [record_of(row) for row in rows]

    async def ack(self, ids: list[int] | None, host: str | None, kind: str | None, by: str,
                  note: str | None, now: str) -> list[dict]:
        """Acknowledge open episodes chosen by ids, host and/or kind (none: all)."""
        where, params = ["state='open'"], []
        if ids is not None:
            where.append(f"id IN ({','.join('?' * len(ids))})")
            params += ids
        if host is not None:
            where.append("host=?")
            params.append(host)
        if kind is not None:
            where.append("kind=?")
            params.append(kind)
        clause = " AND ".join(where)
        async with self.store.transaction() as db:
            rows = await db.execute_fetchall(f"SELECT * FROM episodes WHERE {clause}", params)
            await db.execute(f"UPDATE episodes SET state='acked', acked_by=?, acked_at=?, note=? WHERE {clause}",
                             (by, now, note, *params))
        return [{**record_of(row), "state": "acked", "acked_by": by, "acked_at": now, "note": note}
                for row in rows]
