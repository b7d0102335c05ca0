"""Job history and snapshot metadata in SQLite (aiosqlite), migrated by user_version."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

import aiosqlite

from bkctl.protocol import FINAL_STATUSES

from .. import clock

# Append only: each entry moves the schema from user_version N to N+1.
MIGRATIONS = [
    """
    CREATE TABLE jobs (
        job_id   INTEGER PRIMARY KEY AUTOINCREMENT,
        kind     TEXT NOT NULL,
        status   TEXT NOT NULL,
        trigger  TEXT NOT NULL,
        dry_run  INTEGER NOT NULL DEFAULT 0,
        started  TEXT NOT NULL,
        finished TEXT
    );
    CREATE TABLE job_hosts (
        job_id   INTEGER NOT NULL REFERENCES jobs(job_id),
        host     TEXT NOT NULL,
        status   TEXT NOT NULL,
        stage    TEXT,
        started  TEXT,
        finished TEXT,
        snapshot TEXT,
        stats    TEXT,
        error    TEXT,
        PRIMARY KEY (job_id, host)
    );
    CREATE INDEX job_hosts_by_host ON job_hosts(host, job_id);
    CREATE TABLE snapshots (
        host   TEXT NOT NULL,
        name   TEXT NOT NULL,
        time   TEXT NOT NULL,
        stats  TEXT NOT NULL,
        job_id INTEGER,
        PRIMARY KEY (host, name)
    );
    """,
    """
    CREATE TABLE alerts (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        host    TEXT,
        kind    TEXT NOT NULL,
        message TEXT NOT NULL,
        created TEXT NOT NULL,
        acked   TEXT
    );
    CREATE TABLE verified (
        host          TEXT NOT NULL,
        path          BLOB NOT NULL,
        last_verified TEXT NOT NULL,
        PRIMARY KEY (host, path)
    );
    """,
    """
    CREATE TABLE audit (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        time      TEXT NOT NULL,
        uid       INTEGER NOT NULL,
        user      TEXT NOT NULL,
        pid       INTEGER NOT NULL,
        method    TEXT NOT NULL,
        params    TEXT NOT NULL,
        outcome   TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash      TEXT NOT NULL
    );
    """,
]

GENESIS = "0" * 64
_AUDIT_FIELDS = ("time", "uid", "user", "pid", "method", "params", "outcome")


def audit_hash(prev_hash: str, record: dict) -> str:
    """Each entry's hash covers its fields and the previous entry's hash, so a
    changed, removed or inserted entry breaks every hash after it."""
    body = json.dumps({k: record[k] for k in _AUDIT_FIELDS}, sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(f"{prev_hash}\n{body}".encode()).hexdigest()

_UNFINISHED = tuple(sorted({"queued", "running"}))


def now_iso() -> str:
    return clock.iso(clock.now())


def job_status(host_statuses: list[str]) -> str:
    """A job's status from its hosts': the worst outcome wins."""
    if not host_statuses:
        return "skipped"
    for status in ("running", "queued", "interrupted", "failed", "cancelled", "warning", "ok"):
        if status in host_statuses:
            return status
    return "skipped"


class Store:
    def __init__(self, db: aiosqlite.Connection):
        self.db = db
        self._audit_lock = asyncio.Lock()  # read-last-hash-then-insert must not interleave

    @classmethod
    async def open(cls, path: Path) -> Store:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        db = await aiosqlite.connect(path)
        db.row_factory = aiosqlite.Row
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA foreign_keys=ON")
        store = cls(db)
        await store._migrate()
        return store

    async def close(self) -> None:
        await self.db.close()

    async def _migrate(self) -> None:
        (version,) = await (await self.db.execute("PRAGMA user_version")).fetchone()
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"the database schema (version {version}) is newer than this bkd knows "
                f"({len(MIGRATIONS)}); upgrade bkd"
            )
        for number in range(version, len(MIGRATIONS)):
            await self.db.executescript(
                f"BEGIN; {MIGRATIONS[number]} PRAGMA user_version = {number + 1}; COMMIT;"
            )

    async def mark_interrupted(self) -> int:
        """Runs left unfinished by a previous daemon (stopped or crashed) become interrupted."""
        marks = ",".join("?" * len(_UNFINISHED))
        now = now_iso()
        cursor = await self.db.execute(
            f"UPDATE job_hosts SET status='interrupted', finished=COALESCE(finished, ?), "
            f"error=COALESCE(error, 'the daemon stopped during this run') WHERE status IN ({marks})",
            (now, *_UNFINISHED),
        )
        await self.db.execute(
            f"UPDATE jobs SET status='interrupted', finished=? WHERE status IN ({marks})",
            (now, *_UNFINISHED),
        )
        await self.db.commit()
        return cursor.rowcount

    async def create_job(self, kind: str, hosts: list[str], trigger: str, dry_run: bool) -> int:
        cursor = await self.db.execute(
            "INSERT INTO jobs (kind, status, trigger, dry_run, started) VALUES (?, 'queued', ?, ?, ?)",
            (kind, trigger, int(dry_run), now_iso()),
        )
        job_id = cursor.lastrowid
        await self.db.executemany(
            "INSERT INTO job_hosts (job_id, host, status) VALUES (?, ?, 'queued')",
            [(job_id, host) for host in hosts],
        )
        await self.db.commit()
        return job_id

    async def update_host(self, job_id: int, host: str, **fields) -> None:
        if "stats" in fields:
            fields["stats"] = json.dumps(fields["stats"])
        if fields.get("status") == "running":
            fields.setdefault("started", now_iso())
        if fields.get("status") in FINAL_STATUSES:
            fields.setdefault("finished", now_iso())
        assignments = ", ".join(f"{column}=?" for column in fields)
        await self.db.execute(
            f"UPDATE job_hosts SET {assignments} WHERE job_id=? AND host=?",
            (*fields.values(), job_id, host),
        )
        await self._refresh_job(job_id)
        await self.db.commit()

    async def _refresh_job(self, job_id: int) -> None:
        rows = await self.db.execute_fetchall("SELECT status FROM job_hosts WHERE job_id=?", (job_id,))
        status = job_status([row["status"] for row in rows])
        finished = now_iso() if status in FINAL_STATUSES else None
        await self.db.execute(
            "UPDATE jobs SET status=?, finished=? WHERE job_id=?", (status, finished, job_id)
        )

    async def get_job(self, job_id: int) -> dict | None:
        rows = await self.db.execute_fetchall("SELECT * FROM jobs WHERE job_id=?", (job_id,))
        return (await self._with_hosts(rows))[0] if rows else None

    async def list_jobs(self, host: str | None = None, limit: int = 20) -> list[dict]:
        if host:
            rows = await self.db.execute_fetchall(
                "SELECT jobs.* FROM jobs JOIN job_hosts USING (job_id) WHERE host=? "
                "ORDER BY job_id DESC LIMIT ?", (host, limit))
        else:
            rows = await self.db.execute_fetchall(
                "SELECT * FROM jobs ORDER BY job_id DESC LIMIT ?", (limit,))
        return await self._with_hosts(rows)

    async def _with_hosts(self, job_rows) -> list[dict]:
        jobs = []
        for row in job_rows:
            job = dict(row)
            job["dry_run"] = bool(job["dry_run"])
            host_rows = await self.db.execute_fetchall(
                "SELECT * FROM job_hosts WHERE job_id=? ORDER BY host", (job["job_id"],))
            job["hosts"] = [_host_record(h) for h in host_rows]
            jobs.append(job)
        return jobs

    async def last_runs(self) -> dict[str, dict]:
        """Each host's most recent backup run (not a dry run, not a restore)."""
        rows = await self.db.execute_fetchall(
            "SELECT job_hosts.*, jobs.kind FROM job_hosts JOIN jobs USING (job_id) "
            "WHERE job_id = (SELECT MAX(j.job_id) FROM job_hosts AS j JOIN jobs AS k USING (job_id) "
            "WHERE j.host = job_hosts.host AND k.dry_run = 0 AND k.kind != 'restore')"
        )
        return {row["host"]: _host_record(row) for row in rows}

    async def failure_counts(self) -> dict[str, int]:
        rows = await self.db.execute_fetchall(
            "SELECT host, COUNT(*) AS failures FROM job_hosts WHERE status='failed' GROUP BY host")
        return {row["host"]: row["failures"] for row in rows}

    async def record_snapshot(self, host: str, name: str, time: str, stats: dict,
                              job_id: int | None) -> None:
        await self.db.execute(
            "INSERT OR REPLACE INTO snapshots (host, name, time, stats, job_id) VALUES (?, ?, ?, ?, ?)",
            (host, name, time, json.dumps(stats), job_id),
        )
        await self.db.commit()

    async def add_alert(self, host: str | None, kind: str, message: str) -> dict:
        cursor = await self.db.execute(
            "INSERT INTO alerts (host, kind, message, created) VALUES (?, ?, ?, ?)",
            (host, kind, message, now_iso()))
        await self.db.commit()
        return {"id": cursor.lastrowid, "host": host, "kind": kind, "message": message,
                "created": now_iso(), "acked": None}

    async def list_alerts(self, include_acked: bool = False) -> list[dict]:
        where = "" if include_acked else "WHERE acked IS NULL"
        rows = await self.db.execute_fetchall(f"SELECT * FROM alerts {where} ORDER BY id DESC")
        return [dict(row) for row in rows]

    async def ack_alert(self, alert_id: int) -> bool:
        cursor = await self.db.execute(
            "UPDATE alerts SET acked=? WHERE id=? AND acked IS NULL", (now_iso(), alert_id))
        await self.db.commit()
        return cursor.rowcount == 1

    async def least_recently_verified(self, host: str, paths: list[bytes], count: int) -> list[bytes]:
        """count of paths, never-verified first, then the longest ago."""
        rows = await self.db.execute_fetchall("SELECT path, last_verified FROM verified WHERE host=?", (host,))
        when = {bytes(row["path"]): row["last_verified"] for row in rows}
        return sorted(paths, key=lambda p: (p in when, when.get(p, "")))[:count]

    async def mark_verified(self, host: str, paths: list[bytes]) -> None:
        now = now_iso()
        await self.db.executemany(
            "INSERT OR REPLACE INTO verified (host, path, last_verified) VALUES (?, ?, ?)",
            [(host, path, now) for path in paths])
        await self.db.commit()

    async def append_audit(self, uid: int, user: str, pid: int, method: str, params: dict,
                           outcome: str) -> None:
        async with self._audit_lock:
            rows = await self.db.execute_fetchall("SELECT hash FROM audit ORDER BY id DESC LIMIT 1")
            prev = rows[0]["hash"] if rows else GENESIS
            # Messages may quote file names that are not UTF-8: store them escaped.
            readable = os.fsencode(outcome).decode("utf-8", "backslashreplace")
            record = {"time": now_iso(), "uid": uid, "user": user, "pid": pid, "method": method,
                      "params": json.dumps(params, sort_keys=True), "outcome": readable}
            await self.db.execute(
                "INSERT INTO audit (time, uid, user, pid, method, params, outcome, prev_hash, hash) "
                "VALUES (:time, :uid, :user, :pid, :method, :params, :outcome, :prev, :hash)",
                {**record, "prev": prev, "hash": audit_hash(prev, record)})
            await self.db.commit()

    async def audit_entries(self, limit: int) -> list[dict]:
        rows = await self.db.execute_fetchall("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,))
        return [{**dict(row), "params": json.loads(row["params"])} for row in rows]

    async def verify_audit(self) -> tuple[bool, int | None]:
        """(chain intact, id of the first entry that breaks it)."""
        prev = GENESIS
        async with self.db.execute("SELECT * FROM audit ORDER BY id") as cursor:
            async for row in cursor:
                if row["prev_hash"] != prev or audit_hash(prev, dict(row)) != row["hash"]:
                    return False, row["id"]
                prev = row["hash"]
        return True, None

    async def forget_snapshots(self, host: str, names: list[str]) -> None:
        await self.db.executemany("DELETE FROM snapshots WHERE host=? AND name=?",
                                  [(host, name) for name in names])
        await self.db.commit()

    async def snapshot_stats(self, host: str) -> dict[str, dict]:
        rows = await self.db.execute_fetchall(
            "SELECT name, stats FROM snapshots WHERE host=?", (host,))
        return {row["name"]: json.loads(row["stats"]) for row in rows}


def _host_record(row) -> dict:
    record = dict(row)
    record["stats"] = json.loads(record["stats"]) if record["stats"] else None
    return record
