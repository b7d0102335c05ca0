"""Damage heals forward (SPEC §7): what `verify` and the sample pass found
wrong in a host's snapshots, kept in the host's `meta/damage.json` (written
atomically, so it outlives a restart and a rebuilt database).

A file found *changed* is a damaged copy: one inode, which the snapshots
made after it share while the source file stays the same (unchanged files
are hard links). A copy is known by its path and inode; the snapshots
holding it are a run of consecutive snapshots (a snapshot only links the
previous one's files), found by walking out from one that holds it. While
the newest snapshot holds it, the host's next run fetches that path again in
full, never linked to it (`refetch`). A copy is forgotten once no snapshot
holds it (they were pruned), or when one holding it verifies clean.

Other problems (a missing file, a file the manifest lacks, a manifest that
cannot be read) are counted per snapshot and go with it. The next run needs
nothing for them: a missing file is new to the compare, and a file the
manifest lacks makes the new manifest's count wrong, so it is rebuilt from
the tree.

Each copy and problem is reported under one snapshot, the *subject* of its
`integrity` alert: for a copy, the newest snapshot holding it when it was
found, so that `verify --all` over ten snapshots sharing a damaged inode
opens one alert naming the other nine, not ten alerts."""

from __future__ import annotations

import json
import os
import stat
from bisect import bisect_left
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..infra.fsutil import write_atomic
from ..tree import relpath
from ..tree.layout import HostDir, SnapshotName
from .manifest import open_parent

@dataclass(frozen=True)
class Copy:
    path: str  # as os.fsdecode makes it (surrogate escapes for bytes that are not UTF-8)
    inode: int
    subject: str  # the snapshot whose alert names it
    oldest: str  # the oldest snapshot holding it when it was found: none older can


@dataclass
class Finding:
    """What one `integrity` alert says: how many files of its subject do not
    match, and which other snapshots hold the same damaged copies."""

    subject: str
    files: int = 0
    sharers: set[str] = field(default_factory=set)
    gone: bool = False  # the subject was pruned; sharers still hold its damage

    def message(self, host: str) -> str:
        """For every role: counts and snapshot names, never a file name."""
        others = sorted(self.sharers, key=SnapshotName.parse)
        if self.gone:
            return f"{self.files} damaged file(s) of snapshot {self.subject} (pruned since) are still in " \
                   f"{_listing(others)}"
        text = f"{self.files} file(s) of snapshot {self.subject} do not match its manifest " \
               f"(bkctl verify {host} {self.subject})"
        return f"{text}; the damaged copies are also in {_listing(others)}" if others else text


def _listing(names: list[str]) -> str:
    if len(names) <= 6:
        return f"{len(names)} other snapshot(s): {', '.join(names)}"
    return f"{len(names)} other snapshots, {names[0]} … {names[-1]}"


def inode_at(tree: Path, path: bytes) -> int | None:
    """The inode of the regular file at path in tree (no symlink followed), or None."""
    try:
        root = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        parent, name = open_parent(root, path)
    except OSError:
        return None
    finally:
        os.close(root)
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except OSError:
        return None
    finally:
        os.close(parent)
    return st.st_ino if stat.S_ISREG(st.st_mode) else None


def _copy(entry: dict) -> Copy:
    copy = Copy(str(entry["path"]), int(entry["inode"]), str(entry["subject"]), str(entry["oldest"]))
    relpath.check(os.fsencode(copy.path), "damage.json")
    if not (SnapshotName.parse(copy.subject) and SnapshotName.parse(copy.oldest)):
        raise ValueError("damage.json: not a snapshot name")
    return copy


class Ledger:
    """The damage of one host, as meta/damage.json holds it. Snapshot names
    given to its methods are the host's complete snapshots, oldest first."""

    def __init__(self, host_dir: HostDir):
        self.host_dir = host_dir
        self.copies: list[Copy] = []
        self.problems: dict[str, int] = {}  # snapshot → files missing or unlisted, or its manifest unreadable
        self.dirty = False
        try:
            data = json.loads(host_dir.damage_file.read_bytes())
            self.copies = [_copy(entry) for entry in data["copies"]]
            self.problems = {str(k): int(v) for k, v in data["problems"].items() if SnapshotName.parse(str(k))}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, KeyError, AttributeError):  # not what bkd wrote: start again
            self.copies, self.problems, self.dirty = [], {}, True

    def save(self) -> None:
        if not self.dirty:
            return
        if self.copies or self.problems:
            data = {"copies": [asdict(c) for c in self.copies], "problems": self.problems}
            write_atomic(self.host_dir.damage_file, json.dumps(data, indent=0).encode())
        else:
            self.host_dir.damage_file.unlink(missing_ok=True)
        self.dirty = False

    def _holds(self, snapshot: str, copy: Copy) -> bool:
        return inode_at(self.host_dir.hourly / snapshot, os.fsencode(copy.path)) == copy.inode

    def holders(self, copy: Copy, names: list[str]) -> list[str]:
        """The snapshots holding copy now: from its oldest on, while they do."""
        found = []
        for name in names[bisect_left(names, SnapshotName.parse(copy.oldest), key=SnapshotName.parse):]:
            if not self._holds(name, copy):
                break
            found.append(name)
        return found

    def record(self, snapshot: str, mismatches: list[dict], names: list[str],
               hashed: set[bytes] | None = None) -> None:
        """What a verify of snapshot found: every file's mismatches, or those
        among the paths `hashed` by a sample."""
        changed = {os.fsencode(m["path"]) for m in mismatches if m["problem"] == "changed"}
        others = len(mismatches) - len(changed)

        def verified_clean(copy: Copy) -> bool:
            path = os.fsencode(copy.path)
            return (hashed is None or path in hashed) and path not in changed and self._holds(snapshot, copy)

        copies = [c for c in self.copies if not verified_clean(c)]
        tree = self.host_dir.hourly / snapshot
        known = {(os.fsencode(c.path), c.inode) for c in copies}
        for path in sorted(changed):
            inode = inode_at(tree, path)
            if inode is None or (path, inode) in known:
                continue
            held = self._around(Copy(os.fsdecode(path), inode, snapshot, snapshot), snapshot, names)
            copies.append(Copy(os.fsdecode(path), inode, held[-1], held[0]))
            known.add((path, inode))
        count = others if hashed is None else max(others, self.problems.get(snapshot, 0))
        problems = {**self.problems, snapshot: count} if count else \
            {s: n for s, n in self.problems.items() if s != snapshot}
        if copies != self.copies or problems != self.problems:
            self.copies, self.problems, self.dirty = copies, problems, True

    def _around(self, copy: Copy, snapshot: str, names: list[str]) -> list[str]:
        """The consecutive snapshots around snapshot (which holds copy) that hold it too."""
        if snapshot not in names:
            return [snapshot]
        low = high = names.index(snapshot)
        while low > 0 and self._holds(names[low - 1], copy):
            low -= 1
        while high + 1 < len(names) and self._holds(names[high + 1], copy):
            high += 1
        return names[low:high + 1]

    def findings(self, names: list[str]) -> dict[str, Finding]:
        """Each alert's subject and what it says now. Copies no snapshot holds
        any more, and the problems of snapshots that are gone, are forgotten."""
        existing = set(names)
        findings: dict[str, Finding] = {}
        copies = []
        for copy in self.copies:
            holders = self.holders(copy, names)
            if holders:
                copies.append(copy)
                finding = findings.setdefault(copy.subject, Finding(copy.subject))
                finding.files += 1
                finding.sharers.update(h for h in holders if h != copy.subject)
        problems = {s: n for s, n in self.problems.items() if s in existing}
        if copies != self.copies or problems != self.problems:
            self.copies, self.problems, self.dirty = copies, problems, True
        for snapshot, count in problems.items():
            findings.setdefault(snapshot, Finding(snapshot)).files += count
        for finding in findings.values():
            finding.gone = finding.subject not in existing
        return findings

    def refetch(self, snapshot: str) -> dict[bytes, int]:
        """The paths whose copy in snapshot (the newest) is damaged, with the
        damaged inode: the next run fetches each of them again in full."""
        return {os.fsencode(c.path): c.inode for c in self.copies if self._holds(snapshot, c)}
