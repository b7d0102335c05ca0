"""One host's file-version index: SQLite, `state_dir/versions/HOST.sqlite`.

The host's copies form a chain: each snapshot links only the one before it,
so an inode lives in a contiguous run of the chain's members, and so does
each entry of a path (one inode at one path). The index keeps each as an
interval of chain positions, [born, died) — died NULL while the newest
member holds it — built from each member's change record, never from whole
listings:

- `chain`: the members in order (hourly snapshots; a monthly copy whose
  snapshot was pruned before the index was built stands in for it), with
  the bytes each one's own directories and meta/ records take and the
  bytes of the files it references.
- `holders`: the copies kept now and the member each holds: a snapshot
  itself, a monthly copy its snapshot's (it is `cp -al` of it: the same
  inodes), an archive its snapshot's content (not its inodes: its bytes are
  its own file).
- `entries`: path, type, size, mtime, SHA-256 and inode of each entry, and
  its interval; `inodes`: each inode once — keyed by (number, the member it
  appeared in: numbers are reused once freed) — with its allocated bytes.

An entry or inode whose interval no longer holds any kept copy is gone
from disk and is deleted, so every answer is about what exists: `find`
counts a version's holders, `du` sums inodes' blocks by who holds them."""

from __future__ import annotations

import bisect
import os
import sqlite3
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from ..changes import Entry, RecordRefused, Tree
from .pattern import Pattern

SCHEMA = 1
HOURLY, MONTHLY, ARCHIVE = "hourly", "monthly", "archive"
RANK = {HOURLY: 0, MONTHLY: 1, ARCHIVE: 2}
HOLDS_INODES = (HOURLY, MONTHLY)
TYPE_NAMES = {"f": "file", "d": "dir", "l": "symlink"}
CHUNK = 500  # path ids per query

_TABLES = """
CREATE TABLE info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE chain (seq INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, time INTEGER NOT NULL,
                    dir_bytes INTEGER NOT NULL, file_bytes INTEGER NOT NULL, meta_bytes INTEGER NOT NULL);
CREATE TABLE holders (name TEXT PRIMARY KEY, kind TEXT NOT NULL, seq INTEGER NOT NULL, own_bytes INTEGER NOT NULL);
CREATE TABLE paths (id INTEGER PRIMARY KEY, path BLOB NOT NULL UNIQUE);
CREATE TABLE inodes (id INTEGER PRIMARY KEY, ino INTEGER NOT NULL, born INTEGER NOT NULL, died INTEGER,
                     blocks INTEGER NOT NULL, links INTEGER NOT NULL);
CREATE INDEX inodes_alive ON inodes (ino) WHERE died IS NULL;
CREATE INDEX inodes_span ON inodes (born, died);
CREATE INDEX inodes_died ON inodes (died) WHERE died IS NOT NULL;
CREATE TABLE entries (id INTEGER PRIMARY KEY, path INTEGER NOT NULL, inode INTEGER, born INTEGER NOT NULL,
                      died INTEGER, type TEXT NOT NULL, size INTEGER NOT NULL, mtime INTEGER NOT NULL,
                      sha256 BLOB, blocks INTEGER NOT NULL);
CREATE INDEX entries_path ON entries (path, born);
CREATE INDEX entries_died ON entries (died) WHERE died IS NOT NULL;
"""


class IndexDamaged(Exception):
    """The index cannot be used as it is (missing tables, another schema, a
    database error, or it disagrees with a change record): it is rebuilt."""


class Member(NamedTuple):  # a tuple: made by the thousand at each step of a long history
    seq: int
    name: str  # a snapshot's name, or monthly/YYYY-MM for a copy standing in for a pruned one
    time: int  # Unix seconds of its content
    dir_bytes: int
    file_bytes: int
    meta_bytes: int


class Holder(NamedTuple):
    name: str  # as bkctl names the copy: 2026-12-07_131509, monthly/2026-12, archive/FILE
    kind: str
    seq: int  # the chain member it holds
    own_bytes: int  # its own directories and records (an archive: its files)


PAGE_SIZE = 1024  # an index step touches a page per change here and there: small pages, a small WAL


def _connect(path: Path, new: bool = False) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    if new:
        db.execute(f"PRAGMA page_size={PAGE_SIZE}")  # only before the first table, and before WAL
    db.execute("PRAGMA journal_mode=WAL")
    # No fsync (a third of an index step): the index is derived from the copies, an application crash
    # leaves it whole, and one the system went down under is rebuilt (Versions keeps the mark).
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA cache_size=-16000")  # 16 MB: the paths and the newest entries of a large host
    db.execute("PRAGMA journal_size_limit=4194304")  # the WAL file shrinks back to 4 MB after a checkpoint
    return db


def _successor(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every one starting with prefix (None: there is none)."""
    trimmed = prefix.rstrip(b"\xff")
    return trimmed[:-1] + bytes([trimmed[-1] + 1]) if trimmed else None


class Index:
    def __init__(self, path: Path, db: sqlite3.Connection):
        self.path, self.db = path, db

    @classmethod
    def create(cls, path: Path) -> Index:
        """A new, empty index at path (a file that is not there yet)."""
        db = _connect(path, new=True)
        try:
            db.executescript(_TABLES)
            db.execute(f"PRAGMA user_version={SCHEMA}")
        except BaseException:
            db.close()
            raise
        return cls(path, db)

    @classmethod
    def open(cls, path: Path) -> Index | None:
        """The index at path; None if there is none; IndexDamaged if it cannot be used."""
        if not path.exists():
            return None
        try:
            db = _connect(path)
        except sqlite3.Error as e:
            raise IndexDamaged(f"{path.name}: {e}") from None
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            complete = db.execute("SELECT value FROM info WHERE key='complete'").fetchone()
            if version != SCHEMA or complete is None:
                raise IndexDamaged(f"{path.name}: " + ("an unfinished build" if version == SCHEMA else
                                                        f"schema {version}, not {SCHEMA}"))
        except (sqlite3.Error, IndexDamaged) as e:
            db.close()
            raise e if isinstance(e, IndexDamaged) else IndexDamaged(f"{path.name}: {e}") from None
        return cls(path, db)

    def close(self) -> None:
        self.db.close()

    def mark_complete(self) -> None:
        self.db.execute("INSERT OR REPLACE INTO info (key, value) VALUES ('complete', '1')")

    def inode_bytes(self) -> int:
        """The allocated bytes of every inode a kept copy holds (kept as a
        running total: summing a million rows for each status would not do)."""
        row = self.db.execute("SELECT value FROM info WHERE key = 'inode_bytes'").fetchone()
        return int(row[0]) if row else 0

    def _add_inode_bytes(self, delta: int) -> None:
        if delta:
            self.db.execute("INSERT OR REPLACE INTO info (key, value) VALUES ('inode_bytes', ?)",
                            (str(self.inode_bytes() + delta),))

    # ---- the chain -------------------------------------------------------------------

    def members(self) -> list[Member]:
        return [Member(*row) for row in self.db.execute(
            "SELECT seq, name, time, dir_bytes, file_bytes, meta_bytes FROM chain ORDER BY seq")]

    def tail(self) -> Member | None:
        row = self.db.execute("SELECT seq, name, time, dir_bytes, file_bytes, meta_bytes FROM chain "
                              "ORDER BY seq DESC LIMIT 1").fetchone()
        return Member(*row) if row else None

    def _lookup(self, sql: str, keys: list) -> list[tuple]:
        """Rows of sql (with one IN (…) of keys), CHUNK keys a query."""
        rows = []
        for start in range(0, len(keys), CHUNK):
            part = keys[start:start + CHUNK]
            rows += self.db.execute(sql.format(marks=",".join("?" * len(part))), part).fetchall()
        return rows

    def append(self, name: str, time: int, changes: list[Entry], tree: Path, meta_files: Iterable[Path]) -> Member:
        """Add the member name, made of the chain's tail and changes (its change
        record against it), in one transaction of a few batched statements
        (the index step runs after every snapshot: its cost follows the
        changes, not the tree). Blocks a record does not give are read from
        tree; a record that disagrees with the tree or with the index (a path
        to close that is not there, a path to add that is, an inode that is
        another) raises RecordRefused, and nothing is written."""
        previous = self.tail()
        seq = previous.seq + 1 if previous else 1
        gone = [c for c in changes if c.op != "+"]
        new = [c for c in changes if c.op != "-"]
        stats = self._stat(tree, name, new)
        db = self.db
        db.execute("BEGIN")
        try:
            dir_bytes = previous.dir_bytes if previous else stats[b""].st_blocks * 512
            file_bytes = previous.file_bytes if previous else 0
            db.executemany("INSERT OR IGNORE INTO paths (path) VALUES (?)", [(c.path,) for c in new])
            ids = dict(self._lookup("SELECT path, id FROM paths WHERE path IN ({marks})", [c.path for c in changes]))
            alive = {row[0]: row[1:] for row in self._lookup(
                "SELECT path, id, inode, type, blocks FROM entries WHERE died IS NULL AND path IN ({marks})",
                list(ids.values()))}
            for change in changes:
                held = ids.get(change.path) in alive
                if held != (change.op != "+"):
                    raise RecordRefused(f"{name}: {change.op} of a path the index "
                                         f"{'holds already' if held else 'does not hold'}: {change.path!r}")
            # Close what is gone or replaced: its entry ends here, its inode with its last name.
            closing = [alive[ids[c.path]] for c in gone]
            db.executemany("UPDATE entries SET died = ? WHERE id = ?", [(seq, entry) for entry, _i, _k, _b in closing])
            dir_bytes -= sum(blocks for _e, _i, kind, blocks in closing if kind == "d")
            unlinked: dict[int, int] = {}
            for _entry, inode, kind, _blocks in closing:
                if kind != "d" and inode is not None:
                    unlinked[inode] = unlinked.get(inode, 0) + 1
            # Open what is new: an inode the tail holds under another name is the same inode (a hard link).
            holding = dict(self._lookup("SELECT ino, id FROM inodes WHERE died IS NULL AND ino IN ({marks})",
                                        sorted({c.ino for c in new if c.type != "d"})))
            (next_id,) = db.execute("SELECT coalesce(max(id), 0) + 1 FROM inodes").fetchone()
            born, linked, added_bytes, entries = [], {}, 0, []
            for change in new:
                blocks = change.blocks if change.blocks is not None else stats[change.path].st_blocks * 512
                inode = None
                if change.type == "d":
                    dir_bytes += blocks
                elif change.ino in holding:
                    inode = holding[change.ino]
                    linked[inode] = linked.get(inode, 0) + 1
                else:
                    inode = holding[change.ino] = next_id
                    next_id += 1
                    born.append((inode, change.ino, seq, blocks))
                    added_bytes += blocks
                entries.append((ids[change.path], inode, seq, change.type, change.size, change.mtime_ns,
                                bytes.fromhex(change.sha256) if change.sha256 else None,
                                blocks if change.type == "d" else 0))
            db.executemany("INSERT INTO inodes (id, ino, born, died, blocks, links) VALUES (?, ?, ?, NULL, ?, 1)", born)
            db.executemany("INSERT INTO entries (path, inode, born, died, type, size, mtime, sha256, blocks) "
                           "VALUES (?, ?, ?, NULL, ?, ?, ?, ?, ?)", entries)
            # Each inode that lost or gained names, in one statement: it ends here with its last name.
            changed = {inode: linked.get(inode, 0) - unlinked.get(inode, 0) for inode in {*linked, *unlinked}}
            counts = dict(self._lookup("SELECT id, links FROM inodes WHERE id IN ({marks})",
                                       [inode for inode, delta in changed.items() if delta]))
            ending = {inode for inode, links in counts.items() if links + changed[inode] <= 0}
            db.executemany("UPDATE inodes SET links = links + ?, died = ? WHERE id = ?",
                           [(changed[inode], seq if inode in ending else None, inode) for inode in counts])
            ended = self._lookup("SELECT id, blocks FROM inodes WHERE id IN ({marks})", sorted(ending))
            file_bytes += added_bytes - sum(blocks for _, blocks in ended)
            meta_bytes = 0
            for meta in meta_files:
                try:
                    meta_bytes += os.stat(meta).st_blocks * 512
                except FileNotFoundError:
                    pass
            member = Member(seq, name, time, dir_bytes, file_bytes, meta_bytes)
            db.execute("INSERT INTO chain (seq, name, time, dir_bytes, file_bytes, meta_bytes) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (seq, name, time, dir_bytes, file_bytes, meta_bytes))
            self._add_inode_bytes(added_bytes)
            db.execute("COMMIT")
            return member
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @staticmethod
    def _stat(tree: Path, name: str, new: list[Entry]) -> dict[bytes, os.stat_result]:
        """lstat of the tree's root and of each new entry (its blocks; and the
        inode the record names must be the one there). The record is sorted
        by path, so each directory on the way is opened once."""
        walker = Tree(tree)
        try:
            found = {b"": os.fstat(walker.root)}
            for change in new:
                st = walker.lstat(change.path)
                if st is None:
                    raise RecordRefused(f"{name}: {change.path!r} is not in the snapshot")
                if change.type != "d" and st.st_ino != change.ino:
                    raise RecordRefused(f"{name}: the record names inode {change.ino} at {change.path!r}, "
                                         f"the snapshot holds {st.st_ino}")
                found[change.path] = st
            return found
        finally:
            walker.close()

    # ---- who holds what --------------------------------------------------------------

    def holders(self) -> list[Holder]:
        """The kept copies, in chain order (within a member: snapshot, monthly copy, archive)."""
        found = [Holder(*row) for row in self.db.execute("SELECT name, kind, seq, own_bytes FROM holders")]
        return sorted(found, key=lambda h: (h.seq, RANK[h.kind], h.name))

    def set_holders(self, holders: list[Holder]) -> int:
        """The kept copies are now these; what no copy holds any more is
        forgotten. Returns how many entries were."""
        db = self.db
        before = self.holders()
        if before == sorted(holders, key=lambda h: (h.seq, RANK[h.kind], h.name)):
            return 0  # the usual index step: nothing came or went but the new snapshot, already in
        db.execute("BEGIN")
        try:
            db.execute("DELETE FROM holders")
            db.executemany("INSERT INTO holders (name, kind, seq, own_bytes) VALUES (?, ?, ?, ?)",
                           [(h.name, h.kind, h.seq, h.own_bytes) for h in holders])
            forgotten = 0
            for table, kinds in (("entries", tuple(RANK)), ("inodes", HOLDS_INODES)):
                points = sorted({h.seq for h in holders if h.kind in kinds})
                if points != sorted({h.seq for h in before if h.kind in kinds}):
                    forgotten += self._forget(points, table)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return forgotten

    def _forget(self, points: list[int], table: str) -> int:
        """Delete the rows of table whose interval [born, died) holds none of
        points (returns the entries' count; for inodes 0). Such a row died
        within a gap between two points (or before the first), so the index
        on `died` finds them, whatever the length of the history."""
        db, gone, paths, freed = self.db, 0, set(), 0
        returning = " RETURNING path" if table == "entries" else " RETURNING blocks"
        if not points:
            spans = [("1", ())]
        else:
            spans = [("died IS NOT NULL AND died <= ?", (points[0],))]
            spans += [("died > ? AND died <= ? AND born > ?", (low + 1, high, low))
                      for low, high in zip(points, points[1:]) if high - low > 1]
            if (self.tail() or Member(0, "", 0, 0, 0, 0)).seq > points[-1]:  # the newest members are held by none
                spans.append(("born > ?", (points[-1],)))
        for where, params in spans:
            rows = db.execute(f"DELETE FROM {table} WHERE {where}{returning}", params).fetchall()
            if table == "entries":
                gone += len(rows)
                paths.update(row[0] for row in rows)
            else:
                freed += sum(row[0] for row in rows)
        self._add_inode_bytes(-freed)
        for path in paths:  # a path none of whose entries is kept any more
            db.execute("DELETE FROM paths WHERE id = ? AND NOT EXISTS (SELECT 1 FROM entries WHERE path = ?)",
                       (path, path))
        return gone

    # ---- find --------------------------------------------------------------------------

    def _paths(self, pattern: Pattern) -> list[tuple[int, bytes]]:
        """The paths pattern matches: those in its prefix's range that SQLite's
        GLOB lets through (in C), then its expression."""
        if pattern.exact is not None:
            rows = self.db.execute("SELECT id, path FROM paths WHERE path = ?", (pattern.exact,))
        else:
            where, params = [], []
            if pattern.prefix:
                where.append("path >= ?")
                params.append(pattern.prefix)
                if (upper := _successor(pattern.prefix)) is not None:
                    where.append("path < ?")
                    params.append(upper)
            if pattern.glob is not None:
                where.append("CAST(path AS TEXT) GLOB ?")  # GLOB takes no BLOB; the bytes stay as they are
                params.append(pattern.glob)
            rows = self.db.execute("SELECT id, path FROM paths" + (" WHERE " + " AND ".join(where) if where else ""),
                                   params)
        matches = pattern.matches
        return [(pid, path) for pid, path in rows if matches(path)]

    def find(self, pattern: Pattern, since: int | None, limit: int) -> tuple[list[dict], bool]:
        """Every version of the paths pattern matches, newest first: (versions,
        whether there were more than limit). A version is a run of a path's
        entries with the same type and content (a new inode with the same
        content — new attributes, a re-fetch — is the same version); its
        holders are the kept copies holding any of its entries. since: only
        versions a copy of that time (Unix seconds) or newer holds."""
        holders = self.holders()
        seqs = [h.seq for h in holders]
        times = dict(self.db.execute("SELECT seq, time FROM chain"))
        found = self._paths(pattern)
        versions: list[tuple[int, bytes, dict]] = []
        for start in range(0, len(found), CHUNK):
            ids = dict(found[start:start + CHUNK])
            marks = ",".join("?" * len(ids))
            rows = self.db.execute(f"SELECT path, born, died, type, size, mtime, sha256 FROM entries "
                                   f"WHERE path IN ({marks}) ORDER BY path, born", list(ids)).fetchall()
            run: list[tuple] = []
            for row in rows:
                if run and (row[0] != run[-1][0] or _content(row) != _content(run[-1])):
                    versions += _version(run, ids[run[-1][0]], holders, seqs, times, since)
                    run = []
                run.append(row)
            if run:
                versions += _version(run, ids[run[-1][0]], holders, seqs, times, since)
        versions.sort(key=lambda v: (-v[0], v[1]))
        return [v[2] for v in versions[:limit]], len(versions) > limit

    # ---- du ------------------------------------------------------------------------------

    def freed(self, removed: list[Holder], holders: list[Holder] | None = None) -> int:
        """What deleting the copies removed (together) would return to the
        filesystem: the inodes no other kept copy holds, and their own
        directories and records."""
        holders = self.holders() if holders is None else holders
        points = Counter(h.seq for h in holders if h.kind in HOLDS_INODES)
        points.subtract(h.seq for h in removed if h.kind in HOLDS_INODES)
        remaining = sorted(seq for seq, count in points.items() if count > 0)
        gaps = set()
        for seq in {h.seq for h in removed if h.kind in HOLDS_INODES} - set(remaining):
            at = bisect.bisect_left(remaining, seq)
            gaps.add((remaining[at - 1] if at else None, remaining[at] if at < len(remaining) else None))
        return sum(h.own_bytes for h in removed) + sum(self._gap_bytes(low, high) for low, high in gaps)

    def _gap_bytes(self, low: int | None, high: int | None) -> int:
        """The blocks of the inodes whose interval lies strictly between the
        kept positions low and high (None: no kept position on that side)."""
        where, params = [], []
        if low is not None:
            where.append("born > ?")
            params.append(low)
        if high is not None:
            where += ["born < ?", "died IS NOT NULL", "died <= ?"]
            params += [high, high]
        (found,) = self.db.execute(f"SELECT coalesce(sum(blocks), 0) FROM inodes WHERE {' AND '.join(where) or '1'}",
                                   params).fetchone()
        return found

    def unique_bytes(self) -> int:
        """What the host's kept copies take: each inode once, and each copy's own bytes."""
        (own,) = self.db.execute("SELECT coalesce(sum(own_bytes), 0) FROM holders").fetchone()
        return self.inode_bytes() + own

    def space(self, per_copy: bool) -> dict:
        """unique_bytes: what the host's kept copies take (each inode once,
        their directories, records and archives); total_bytes: what they
        reference (each copy counted whole, as if none shared an inode);
        with per_copy, what deleting each copy alone would free (one query
        for each copy that alone holds its position: the inodes between its
        neighbours)."""
        holders = self.holders()
        members = {m.seq: m for m in self.members()}
        unique = self.unique_bytes()
        total = sum(h.own_bytes + (members[h.seq].file_bytes if h.kind in HOLDS_INODES and h.seq in members else 0)
                    for h in holders)
        result = {"unique_bytes": unique, "total_bytes": total}
        if per_copy:
            points = Counter(h.seq for h in holders if h.kind in HOLDS_INODES)
            distinct = sorted(points)
            copies = []
            for h in holders:
                freed = h.own_bytes
                if h.kind in HOLDS_INODES and points[h.seq] == 1:
                    at = bisect.bisect_left(distinct, h.seq)
                    freed += self._gap_bytes(distinct[at - 1] if at else None,
                                             distinct[at + 1] if at + 1 < len(distinct) else None)
                copies.append({"name": h.name, "kind": h.kind, "freed_bytes": freed})
            result["snapshots"] = copies
        return result

    # ---- verify ----------------------------------------------------------------------------

    def regular_files(self, seq: int) -> dict[bytes, tuple[str, int]]:
        """path → (SHA-256, size) of the regular files the member seq holds, as the index has them."""
        rows = self.db.execute("SELECT p.path, e.sha256, e.size FROM entries e JOIN paths p ON p.id = e.path "
                               "WHERE e.type = 'f' AND e.born <= ? AND (e.died IS NULL OR e.died > ?)", (seq, seq))
        return {path: (digest.hex() if digest else "", size) for path, digest, size in rows}

    def size_on_disk(self) -> int:
        return sum(os.stat(p).st_size for p in (self.path, self.path.with_name(self.path.name + "-wal"))
                   if p.exists())


def _content(row: tuple) -> tuple:
    """What a version is: the type, and the content (a file's SHA-256; another type's size)."""
    _path, _born, _died, kind, size, _mtime, digest = row
    return (kind, digest) if kind == "f" else (kind, size if kind != "d" else None)


def _version(run: list[tuple], path: bytes, holders: list[Holder], seqs: list[int], times: dict[int, int],
             since: int | None) -> list[tuple[int, bytes, dict]]:
    """One version (a run of entries of a path) with the copies that hold it; none if nothing does."""
    count, first, last = 0, None, None
    for _path, born, died, *_ in run:
        low = bisect.bisect_left(seqs, born)
        high = bisect.bisect_left(seqs, died) if died is not None else len(seqs)
        if low < high:
            count += high - low
            first = low if first is None else first
            last = bisect.bisect_left(seqs, seqs[high - 1])  # the newest member it is in: its snapshot first
    if not count or (since is not None and times.get(seqs[last], 0) < since):
        return []
    newest = run[-1]
    _p, _b, _d, kind, size, mtime, digest = newest
    return [(seqs[last], path, {
        "path": os.fsdecode(b"/" + path), "type": TYPE_NAMES.get(kind, "other"), "size": size,
        "mtime_ns": mtime, "sha256": digest.hex() if digest else None,
        "first": holders[first].name, "last": holders[last].name, "count": count})]
