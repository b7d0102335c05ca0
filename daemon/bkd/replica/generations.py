"""On a replica, the generations of a primary's state database:
`{backup_root}/.bkd-upstreams/{replica}/state/YYYY-MM-DD_HHMMSS/bkd.sqlite`,
one per pull that brought a copy different from the newest one kept, each
with `chain.json`: what its audit chain is (entries, newest entry, checksum
of the file) and whether it extends the generation before it.

A generation is never changed or overwritten: a wiped or rewritten primary
database arrives as a new generation beside the good ones, marked as not
extending them (an `integrity` alert says so), and the generations on both
sides of such a break are never pruned. The others are pruned by KEEP, the
same tiered rule as snapshots. They are plain SQLite files: after losing
the primary, `sqlite3 …/bkd.sqlite 'SELECT * FROM jobs'` reads them (the
README says how)."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from urllib.request import pathname2url

from ..config.models import Retention
from ..infra.fsutil import write_atomic
from ..pipeline import retention
from ..state.audit import GENESIS, audit_hash
from ..tree.layout import SnapshotName

DATABASE = "bkd.sqlite"
CHAIN = "chain.json"
KEEP = Retention(hourly_hours=48, daily_days=90, monthly_months=24)
_AUDIT = "SELECT id, time, uid, user, pid, method, params, outcome, prev_hash, hash FROM audit ORDER BY id"


@dataclass(frozen=True)
class Chain:
    """What a generation's audit chain is, and how it relates to the one before."""

    sha256: str  # of the database file
    entries: int = 0
    head_id: int = 0  # the newest entry (0: none)
    head_hash: str = GENESIS
    problem: str | None = None  # its own chain is broken, or the file is no bkd state database
    extends: str | None = None  # the generation it extends
    breaks: str | None = None  # the generation it does not extend
    why: str | None = None  # ... and how: which entry of that one it lacks or changed

    @property
    def ok(self) -> bool:
        return self.problem is None and self.breaks is None

    def message(self) -> str | None:
        """What is wrong, for every role (entry numbers and generation names only)."""
        if self.problem is not None:
            return self.problem
        if self.breaks is not None:
            return f"{self.why}: it does not extend generation {self.breaks}"
        return None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_chain(path: Path, since: Chain | None, since_name: str | None) -> Chain:
    """The audit chain of the database at path (a primary's copy: hostile,
    opened read-only and immutable, its schema not trusted), checked entry by
    entry, and whether it extends `since` (the newest generation before it
    whose own chain is whole): it must hold since's newest entry, unchanged,
    at the same place."""
    checksum = file_sha256(path)
    try:
        uri = f"file:{pathname2url(str(path))}?mode=ro&immutable=1"
        db = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as e:
        return Chain(checksum, problem=f"not a readable SQLite database ({e})")
    try:
        db.execute("PRAGMA trusted_schema=OFF")
        prev_hash, count, head, held = GENESIS, 0, (0, GENESIS), None
        for row in db.execute(_AUDIT):
            entry_id, record = row[0], dict(zip(("time", "uid", "user", "pid", "method", "params", "outcome"),
                                                row[1:8]))
            if row[8] != prev_hash or audit_hash(prev_hash, record) != row[9]:
                return Chain(checksum, count, *head, problem=f"its audit chain breaks at entry {entry_id}")
            prev_hash, count, head = row[9], count + 1, (entry_id, row[9])
            if since is not None and entry_id == since.head_id:
                held = row[9]
    except (sqlite3.Error, TypeError, ValueError) as e:
        return Chain(checksum, problem=f"not a bkd state database ({e})")
    finally:
        db.close()
    if since is None:
        return Chain(checksum, count, *head)
    if since.head_id and held != since.head_hash:
        why = "is gone" if held is None else "differs"
        return Chain(checksum, count, *head, breaks=since_name, why=f"its audit entry {since.head_id} {why}")
    return Chain(checksum, count, *head, extends=since_name)


def read_mark(directory: Path) -> Chain | None:
    try:
        data = json.loads((directory / CHAIN).read_bytes())
        return Chain(**{key: data.get(key) for key in Chain.__dataclass_fields__})
    except (OSError, ValueError, TypeError):
        return None


def write_mark(directory: Path, chain: Chain) -> None:
    write_atomic(directory / CHAIN, json.dumps(asdict(chain), indent=1).encode())


def names(state_dir: Path) -> list[str]:
    """The generations, oldest first."""
    try:
        found = [e.name for e in os.scandir(state_dir) if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []
    return [str(n) for n in sorted(n for n in map(SnapshotName.parse, found) if n)]


def doomed(generations: list[str], marks: dict[str, Chain | None], now: datetime) -> list[str]:
    """The generations KEEP lets go, but never the newest, one that does not
    extend the one before it, nor the one before such a break. Pure."""
    evidence = set()
    for index, name in enumerate(generations):
        mark = marks.get(name)
        if mark is not None and not mark.ok:
            evidence.add(name)
            evidence.update(generations[max(index - 1, 0):index])
    return [d.snapshot for d in retention.plan(generations, now, KEEP)
            if d.action == "delete" and d.snapshot not in evidence]
