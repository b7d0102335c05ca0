"""The audit log of mutating calls: hash-chained, so that a changed, removed
or inserted entry breaks every hash after it, and anchored outside the
database, so that removing the newest entries is noticed too.

The anchor is the head record `{backup_root}/.bkd-audit-head`: the id and
hash of the newest entry, replaced atomically after every entry (and each
entry's id and hash also go to the journal, the chain's witness: see
auditwitness.py). The chain alone cannot show a truncation — what is left is
still a valid chain — but it no longer ends where the head says. A head that
does not match is left as it is, as evidence, until an admin re-anchors
(`bkd audit reanchor`, with the daemon stopped) after rebuilding the state
database on purpose. Every anchoring of a log that holds entries — that
one, or the daemon's own when both the head record and its marker are gone
— is itself an entry of the chain (`audit.reanchor`, `audit.anchor`), and
the daemon raises an alert for each (ANCHORINGS)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from .. import clock
from ..fsutil import write_atomic

if TYPE_CHECKING:
    from . import Store

log = structlog.get_logger()

GENESIS = "0" * 64
HEAD_NAME = ".bkd-audit-head"
_ANCHORED_KEY = "audit.anchored"  # kv: set once the log has had a head record
_ALERTED_KEY = "audit.anchorings_alerted"  # kv: the newest anchoring entry an alert was raised for
ANCHORINGS = ("audit.anchor", "audit.reanchor")  # the entries that (re)anchor the log
_FIELDS = ("time", "uid", "user", "pid", "method", "params", "outcome")
REANCHOR_HINT = ("if the state database was rebuilt on purpose, stop bkd and run `bkd audit reanchor` "
                 "(README: Who may do what)")


def audit_hash(prev_hash: str, record: dict) -> str:
    body = json.dumps({k: record[k] for k in _FIELDS}, sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(f"{prev_hash}\n{body}".encode()).hexdigest()


@dataclass(frozen=True)
class Head:
    """The newest entry: its id (0 for an empty log) and hash."""

    id: int
    hash: str


@dataclass(frozen=True)
class Verdict:
    chain_ok: bool
    broken_at: int | None = None  # the first entry that does not chain
    problem: str | None = None  # one line for people


EMPTY = Head(0, GENESIS)


def read_head(path: Path) -> Head | None:
    try:
        data = json.loads(path.read_text())
        return Head(int(data["id"]), str(data["hash"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"the audit head record {path} is unreadable ({e})") from None


def write_head(path: Path, head: Head, time: str) -> None:
    write_atomic(path, (json.dumps({"id": head.id, "hash": head.hash, "time": time}) + "\n").encode())


def compare(head: Head | None, last: Head, at_head: Head | None, path: Path) -> str | None:
    """What is wrong when the head record says `head` (None: the file is
    missing), the database's newest entry is `last` and its entry with the
    head's id is `at_head` (None: there is none); or None."""
    if head is None:
        return f"the audit head record {path} is missing; {REANCHOR_HINT}"
    if head == last:
        return None
    newest = f"its newest is entry {last.id}" if last.id else "it holds no entries"
    if at_head is None and head.id:
        return (f"the newest audit entries were removed: the head record {path} names entry {head.id}, which "
                f"the database does not hold ({newest}); {REANCHOR_HINT}")
    if at_head != head:
        return f"audit entry {head.id} is not the one the head record {path} names ({newest}); {REANCHOR_HINT}"
    return f"audit entries after entry {head.id} are not anchored by the head record {path} ({newest}); {REANCHOR_HINT}"


class AuditStore:
    def __init__(self, store: Store):
        self.store = store
        self.head_path: Path | None = None  # None: no anchor (only the chain is checked)
        self._head: Head | None = None  # what the head record says while it matches the database
        self._lock = asyncio.Lock()  # one entry (row and head record) at a time; verify sees whole ones

    async def _last(self, db=None) -> Head:
        rows = await (db or self.store.db).execute_fetchall("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1")
        return Head(rows[0]["id"], rows[0]["hash"]) if rows else EMPTY

    async def _entry(self, entry_id: int, db=None) -> Head | None:
        if entry_id == 0:
            return EMPTY
        rows = await (db or self.store.db).execute_fetchall("SELECT id, hash FROM audit WHERE id = ?", (entry_id,))
        return Head(rows[0]["id"], rows[0]["hash"]) if rows else None

    async def anchor(self, path: Path, actor: tuple[int, str, int] | None = None) -> str | None:
        """At start: check the database against the head record at path and
        keep it current from now on. Returns the problem when they disagree;
        the record is then left as it is (evidence) and no longer updated.
        A log with entries but neither a head record nor its marker (the first
        start of a bkd with head records — or both removed) is anchored anew
        through an `audit.anchor` entry by actor (uid, user, pid)."""
        async with self._lock:
            self.head_path = path
            self._head = None
            last = await self._last()
            try:
                head = await asyncio.to_thread(read_head, path)
            except ValueError as e:
                log.error("audit.head_mismatch", problem=str(e))
                return str(e)
            fresh = head is None and await self.store.get_value(_ANCHORED_KEY) is None
            if fresh and (last.id == 0 or actor is None):
                # A new log: anchor it now (the journal still holds any earlier one's entries).
                await self._write_head(last)
                await self.store.set_value(_ANCHORED_KEY, str(path))
                log.info("audit.anchored", head=path.as_posix(), id=last.id, hash=last.hash)
                return None
            if head is not None and head != last:
                after = await self.store.fetch("SELECT prev_hash FROM audit WHERE id > ? ORDER BY id LIMIT 2",
                                               (head.id,))
                if len(after) == 1 and after[0]["prev_hash"] == head.hash:
                    # The daemon stopped between an entry's commit and its head record.
                    await self._write_head(last)
                    log.warning("audit.head_advanced", id=last.id, hash=last.hash)
                    return None
            if not fresh:
                problem = compare(head, last, head and await self._entry(head.id), path)
                if problem is None:
                    self._head = last
                else:
                    log.error("audit.head_mismatch", problem=problem)
                return problem
            self._head = last  # the entry below chains from it and moves the head
        log.warning("audit.anchored_anew", head=path.as_posix(), id=last.id, hash=last.hash)
        await self.append(clock.iso(clock.now()), *actor, "audit.anchor",
                          {"previous_head": None, "database_head": {"id": last.id, "hash": last.hash},
                           "why": "the head record and its marker were missing"}, "ok")
        await self.store.set_value(_ANCHORED_KEY, str(path))
        return None

    async def newest(self) -> Head:
        """The newest entry (what notifications and the report carry, so that a copy lives elsewhere)."""
        return await self._last()

    async def hashes(self) -> dict[int, str]:
        """Every entry's hash by id (what the journal's records are compared with)."""
        rows = await self.store.fetch("SELECT id, hash FROM audit")
        return {row["id"]: row["hash"] for row in rows}

    async def unalerted_anchorings(self) -> list[dict]:
        """Anchoring entries no alert was raised for yet; from now on they count as alerted."""
        seen = int(await self.store.get_value(_ALERTED_KEY) or 0)
        rows = await self.store.fetch(
            f"SELECT id, time, uid, user, method FROM audit WHERE id > ? AND method IN "
            f"({', '.join('?' * len(ANCHORINGS))}) ORDER BY id", (seen, *ANCHORINGS))
        if rows:
            await self.store.set_value(_ALERTED_KEY, str(rows[-1]["id"]))
        return [dict(row) for row in rows]

    async def _write_head(self, head: Head) -> None:
        await asyncio.to_thread(write_head, self.head_path, head, clock.iso(clock.now()))
        self._head = head

    async def append(self, time: str, uid: int, user: str, pid: int, method: str, params: dict,
                     outcome: str) -> dict:
        # Messages may quote file names that are not UTF-8: store them escaped.
        readable = os.fsencode(outcome).decode("utf-8", "backslashreplace")
        record = {"time": time, "uid": uid, "user": user, "pid": pid, "method": method,
                  "params": json.dumps(params, sort_keys=True), "outcome": readable}
        async with self._lock:
            async with self.store.transaction() as db:
                prev = await self._last(db)
                record.update(prev_hash=prev.hash, hash=audit_hash(prev.hash, record))
                cursor = await db.execute(
                    "INSERT INTO audit (time, uid, user, pid, method, params, outcome, prev_hash, hash) "
                    "VALUES (:time, :uid, :user, :pid, :method, :params, :outcome, :prev_hash, :hash)", record)
                record["id"] = cursor.lastrowid
            # The journal's copy (auditwitness.py): BKD_ANCHOR tells this log from another server's.
            log.info("audit.entry", id=record["id"], hash=record["hash"], uid=uid, method=method,
                     outcome=readable[:200], anchor=self.head_path and self.head_path.as_posix())
            if self.head_path is not None and self._head is not None:
                if prev != self._head:  # someone changed the table under the running daemon
                    at_head = await self._entry(self._head.id)
                    log.error("audit.head_mismatch", problem=compare(self._head, prev, at_head, self.head_path))
                    self._head = None
                else:
                    try:
                        await self._write_head(Head(record["id"], record["hash"]))
                    except OSError as e:  # the next entry tries again; verify says so meanwhile
                        log.error("audit.head_unwritten", head=self.head_path.as_posix(), error=str(e))
        return record

    async def entries(self, limit: int) -> list[dict]:
        rows = await self.store.fetch("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,))
        return [{**dict(row), "params": json.loads(row["params"])} for row in rows]

    async def _chain(self) -> tuple[Verdict, Head]:
        """The chain, entry by entry; and its newest entry."""
        prev = EMPTY
        async with self.store.db.execute("SELECT * FROM audit ORDER BY id") as cursor:
            async for row in cursor:
                if row["prev_hash"] != prev.hash or audit_hash(prev.hash, dict(row)) != row["hash"]:
                    return Verdict(False, row["id"], f"the hash chain breaks at entry {row['id']} "
                                                     "(an entry was changed, removed or inserted)"), prev
                prev = Head(row["id"], row["hash"])
        return Verdict(True), prev

    async def verify(self) -> Verdict:
        """The chain, and its end against the head record."""
        async with self._lock:
            verdict, last = await self._chain()
            if not verdict.chain_ok or self.head_path is None:
                return verdict
            try:
                head = await asyncio.to_thread(read_head, self.head_path)
            except ValueError as e:
                return Verdict(False, None, str(e))
            problem = compare(head, last, head and await self._entry(head.id), self.head_path)
            return Verdict(problem is None, None, problem)

    async def reanchor(self, path: Path, uid: int, user: str, pid: int, time: str) -> dict:
        """After a deliberate rebuild of the state database: make the head
        record name the database's newest entry again, through an entry that
        records the old head and what the database held. Refused when the
        chain itself is broken: re-anchoring must not bless a changed log."""
        async with self._lock:
            self.head_path = path
            verdict, found = await self._chain()
            if not verdict.chain_ok:
                raise ValueError(f"{verdict.problem}; not re-anchoring a changed log")
            try:
                old = await asyncio.to_thread(read_head, path)
            except ValueError:
                old = None
            self._head = found  # the entry below chains from it and moves the head
        entry = await self.append(time, uid, user, pid, "audit.reanchor",
                                  {"previous_head": old and {"id": old.id, "hash": old.hash},
                                   "database_head": {"id": found.id, "hash": found.hash}}, "ok")
        await self.store.set_value(_ANCHORED_KEY, str(path))
        return entry
