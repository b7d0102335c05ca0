"""bkd's state in SQLite (aiosqlite): job history, snapshot records, alert
episodes and silences, the notification outbox, disk samples, the audit
log. One connection; writes that span statements run as one transaction
under one lock, so coroutines never interleave inside one.

Every method may raise sqlite3.Error or OSError (a full disk, a broken
file); callers decide what that costs — never a stranded run."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sqlite3
from pathlib import Path

import aiosqlite

from ..infra.fsutil import commit_file
from .audit import AuditStore
from .disk import DiskStore
from .jobs import JobStore
from .outbox import OutboxStore
from .schema import MIGRATIONS
from .snapshots import SnapshotStore

DATABASE_NAME = "bkd.sqlite"
STORE_ERRORS = (sqlite3.Error, OSError)


class StoreUnusable(Exception):
    """The database cannot be opened; the message names the file and the way out."""


class Store:
    def __init__(self, db: aiosqlite.Connection):
        self.db = db
        self._lock = asyncio.Lock()
        self.jobs = JobStore(self)
        self.audit = AuditStore(self)
        self.snapshots = SnapshotStore(self)
        self.outbox = OutboxStore(self)
        self.disk = DiskStore(self)

    @classmethod
    async def open(cls, path: Path) -> Store:
        db = await aiosqlite.connect(path, isolation_level=None)  # transactions are explicit
        try:
            db.row_factory = aiosqlite.Row
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA foreign_keys=ON")
            await db.execute("PRAGMA busy_timeout=5000")
            store = cls(db)
            await store._migrate()
        except sqlite3.DatabaseError as e:
            await db.close()
            raise StoreUnusable(
                f"cannot use the state database {path}: {e}; move it aside and start bkd again "
                "(job history is lost; snapshot records are rebuilt from each host's meta/)") from None
        except BaseException:
            await db.close()
            raise
        return store

    async def close(self) -> None:
        async with self._lock:
            await self.db.close()

    @contextlib.asynccontextmanager
    async def transaction(self):
        """One write transaction; nothing else writes until it ends."""
        async with self._lock:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                with contextlib.suppress(*STORE_ERRORS):
                    await self.db.execute("ROLLBACK")
                raise
            await self.db.execute("COMMIT")

    async def fetch(self, sql: str, params=()) -> list[aiosqlite.Row]:
        # Under the writers' lock: on this one connection a read that slipped in
        # between a transaction's statements would see its uncommitted half
        # (a job finished while one of its hosts still runs).
        async with self._lock:
            return list(await self.db.execute_fetchall(sql, params))

    async def _migrate(self) -> None:
        (version,) = await (await self.db.execute("PRAGMA user_version")).fetchone()
        if version > len(MIGRATIONS):
            raise StoreUnusable(
                f"the database schema (version {version}) is newer than this bkd knows "
                f"({len(MIGRATIONS)}); upgrade bkd")
        for number in range(version, len(MIGRATIONS)):
            await self.db.executescript(
                f"BEGIN; {MIGRATIONS[number]} PRAGMA user_version = {number + 1}; COMMIT;")

    async def changes(self) -> int:
        """Rows changed through this connection since it opened (SQLite's total_changes())."""
        rows = await self.fetch("SELECT total_changes() AS n")
        return rows[0]["n"]

    async def copy_to(self, path: Path) -> None:
        """A consistent copy of the whole database at path (SQLite's online
        backup), taken between transactions, in rollback-journal mode so
        that it can be read where nothing may be written beside it. path is
        replaced atomically; its directory must exist."""
        tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            target = sqlite3.connect(tmp, check_same_thread=False)  # written on aiosqlite's thread
            try:
                async with self._lock:
                    await self.db.backup(target)
                await asyncio.to_thread(_settle_copy, target)
            finally:
                target.close()
            await asyncio.to_thread(commit_file, tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    async def get_value(self, key: str) -> str | None:
        rows = await self.fetch("SELECT value FROM kv WHERE key=?", (key,))
        return rows[0]["value"] if rows else None

    async def set_value(self, key: str, value: str) -> None:
        async with self.transaction() as db:
            await db.execute("INSERT INTO kv (key, value) VALUES (?, ?) "
                             "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, value))

    async def least_recently_verified(self, host: str, paths: list[bytes], count: int) -> list[bytes]:
        """count of paths, never-verified first, then the longest ago."""
        rows = await self.fetch("SELECT path, last_verified FROM verified WHERE host=?", (host,))
        when = {bytes(row["path"]): row["last_verified"] for row in rows}
        return sorted(paths, key=lambda p: (p in when, when.get(p, "")))[:count]

    async def mark_verified(self, host: str, paths: list[bytes], now: str) -> None:
        async with self.transaction() as db:
            await db.executemany(
                "INSERT OR REPLACE INTO verified (host, path, last_verified) VALUES (?, ?, ?)",
                [(host, path, now) for path in paths])


def _settle_copy(target: sqlite3.Connection) -> None:
    target.execute("PRAGMA journal_mode=DELETE")
    target.commit()
