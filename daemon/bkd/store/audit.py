"""The audit log of mutating calls: hash-chained, so that a changed, removed
or inserted entry breaks every hash after it."""

from __future__ import annotations

import hashlib
import json
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import Store

GENESIS = "0" * 64
_FIELDS = ("time", "uid", "user", "pid", "method", "params", "outcome")


def audit_hash(prev_hash: str, record: dict) -> str:
    body = json.dumps({k: record[k] for k in _FIELDS}, sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(f"{prev_hash}\n{body}".encode()).hexdigest()


class AuditStore:
    def __init__(self, store: Store):
        self.store = store

    async def append(self, time: str, uid: int, user: str, pid: int, method: str, params: dict,
                     outcome: str) -> dict:
        # Messages may quote file names that are not UTF-8: store them escaped.
        readable = os.fsencode(outcome).decode("utf-8", "backslashreplace")
        record = {"time": time, "uid": uid, "user": user, "pid": pid, "method": method,
                  "params": json.dumps(params, sort_keys=True), "outcome": readable}
        async with self.store.transaction() as db:
            rows = await db.execute_fetchall("SELECT hash FROM audit ORDER BY id DESC LIMIT 1")
            prev = rows[0]["hash"] if rows else GENESIS
            record.update(prev_hash=prev, hash=audit_hash(prev, record))
            await db.execute(
                "INSERT INTO audit (time, uid, user, pid, method, params, outcome, prev_hash, hash) "
                "VALUES (:time, :uid, :user, :pid, :method, :params, :outcome, :prev_hash, :hash)", record)
        return record

    async def entries(self, limit: int) -> list[dict]:
        rows = await self.store.fetch("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,))
        return [{**dict(row), "params": json.loads(row["params"])} for row in rows]

    async def verify(self) -> tuple[bool, int | None]:
        """(chain intact, id of the first entry that breaks it)."""
        prev = GENESIS
        async with self.store.db.execute("SELECT * FROM audit ORDER BY id") as cursor:
            async for row in cursor:
                if row["prev_hash"] != prev or audit_hash(prev, dict(row)) != row["hash"]:
                    return False, row["id"]
                prev = row["hash"]
        return True, None
