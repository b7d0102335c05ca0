"""Alert episodes (SPEC §8): one row per (kind, host, subject) from the moment
a condition starts until it clears; repeats only count. What changes is
decided by the pure functions of episodes.py; this module persists it in
the state database (state/store.py), beside the silences."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import episodes

if TYPE_CHECKING:
    from ..state.store import Store

CURRENT = "state != 'resolved'"
MUTABLE = ("state", "count", "message", "last_seen", "resolved", "acked_by", "acked_at", "note", "notified",
           "reminded", "reminders")


def record_of(row) -> dict:
    record = dict(row)
    record["host"] = record["host"] or None
    record["subject"] = record["subject"] or None
    return record


async def save_episode(db, episode: dict) -> None:
    """Write an existing episode's changing fields (inside a transaction)."""
    await db.execute(f"UPDATE episodes SET {', '.join(f'{c}=?' for c in MUTABLE)} WHERE id=?",
                     (*(episode[c] for c in MUTABLE), episode["id"]))


class AlertStore:
    def __init__(self, store: Store):
        self.store = store

    async def touch(self, kind: str, host: str | None, subject: str | None, message: str,
                    now: str, count: int | None = None) -> tuple[dict, bool]:
        """The condition holds now: count a repeat of the current episode, or
        open one. Returns (the episode, whether it was opened now)."""
        key = (kind, host or "", subject or "")
        async with self.store.transaction() as db:
            rows = await db.execute_fetchall(
                f"SELECT * FROM episodes WHERE kind=? AND host=? AND subject=? AND {CURRENT}", key)
            episode, opened = episodes.raised(record_of(rows[0]) if rows else None, kind, host, subject, message,
                                              now, count)
            if opened:
                cursor = await db.execute(
                    "INSERT INTO episodes (kind, host, subject, state, count, message, first_seen, last_seen) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (*key, episode["state"], episode["count"], message, now, now))
                episode["id"] = cursor.lastrowid
            else:
                await save_episode(db, episode)
        return episode, opened

    async def resolve(self, kind: str, host: str | None, subject: str | None, now: str) -> list[dict]:
        """The condition cleared: end its episode (every subject's, when subject is None)."""
        where = f"kind=? AND host=? AND {CURRENT}" + (" AND subject=?" if subject is not None else "")
        params = (kind, host or "") + ((subject,) if subject is not None else ())
        async with self.store.transaction() as db:
            ended = [episodes.resolved(record_of(row), now)
                     for row in await db.execute_fetchall(f"SELECT * FROM episodes WHERE {where}", params)]
            for episode in ended:
                await save_episode(db, episode)
        return ended

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
        async with self.store.transaction() as db:
            rows = await db.execute_fetchall(f"SELECT * FROM episodes WHERE {' AND '.join(where)}", params)
            taken = [episodes.acked(record_of(row), by, note, now) for row in rows]
            for episode in taken:
                await save_episode(db, episode)
        return taken

    # ---- silences ---------------------------------------------------------------

    async def silence(self, host: str | None, kind: str | None, until: str, note: str | None, by: str,
                      now: str, limit: int) -> tuple[dict, list[int]] | None:
        """A new silence of exactly this host and kind, ending the ones in force
        (one per host and kind: the new one replaces them). Returns it and the
        ids it replaced; None when `limit` silences of other host/kind pairs
        are in force already."""
        async with self.store.transaction() as db:
            rows = await db.execute_fetchall(
                "SELECT id, host IS ? AND kind IS ? AS same FROM silences WHERE ended IS NULL AND until > ?",
                (host, kind, now))
            replaced = [row["id"] for row in rows if row["same"]]
            if len(rows) - len(replaced) >= limit:
                return None
            if replaced:
                await db.execute(f"UPDATE silences SET ended=? WHERE id IN ({','.join('?' * len(replaced))})",
                                 (now, *replaced))
            cursor = await db.execute(
                "INSERT INTO silences (host, kind, until, note, by, created) VALUES (?, ?, ?, ?, ?, ?)",
                (host, kind, until, note, by, now))
        return ({"id": cursor.lastrowid, "host": host, "kind": kind, "until": until, "note": note, "by": by,
                 "created": now, "ended": None}, replaced)

    async def unsilence(self, host: str | None, kind: str | None, now: str) -> list[int]:
        """End the active silences naming exactly this host and kind."""
        async with self.store.transaction() as db:
            rows = await db.execute_fetchall(
                "SELECT id FROM silences WHERE host IS ? AND kind IS ? AND ended IS NULL AND until > ?",
                (host, kind, now))
            ids = [row["id"] for row in rows]
            if ids:
                await db.execute(f"UPDATE silences SET ended=? WHERE id IN ({','.join('?' * len(ids))})",
                                 (now, *ids))
        return ids

    async def silences(self, now: str) -> list[dict]:
        """Silences in force at now, oldest first."""
        rows = await self.store.fetch(
            "SELECT * FROM silences WHERE ended IS NULL AND until > ? ORDER BY id", (now,))
        return [dict(row) for row in rows]
