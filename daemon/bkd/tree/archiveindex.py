"""The index written beside an archive: every entry's name, type, mode,
owner, size, mtime and link target, and where its bytes lie in the archive's
tar stream. An archive is browsed from it, never by decompressing it; a
restore from it reads the stream only up to the end of what was asked
(pipeline/tarstream.py).

The file is gzip-compressed records of ten NUL-terminated fields. NUL is the
one byte no file name and no link target can hold, so names with any other
bytes (newlines, backslashes, invalid UTF-8) need no escaping and cannot be
misread. The records keep the archive's order: a directory before what it
holds, and a subtree's entries one after another (tar recurses depth first)."""

from __future__ import annotations

import gzip
import stat
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from ..infra.errors import InvalidArgument, NotFound
from ..infra.fsutil import write_atomic
from . import browse, relpath

HEADER = b"bkd archive index 1\n"
FIELDS = 10
# The type of an entry, and its file-type bits.
KINDS = {"f": stat.S_IFREG, "d": stat.S_IFDIR, "l": stat.S_IFLNK, "h": stat.S_IFREG, "c": stat.S_IFCHR,
         "b": stat.S_IFBLK, "p": stat.S_IFIFO}


class IndexRefused(ValueError):
    """An index bkd will not use (damaged, or not one it wrote)."""


class Entry(NamedTuple):
    kind: str  # f file, d directory, l symlink, h hard link to an earlier entry, c/b device, p fifo
    mode: int  # permission bits
    uid: int
    gid: int
    size: int  # a hard link's: 0 (its data is its target's)
    mtime_ns: int
    offset: int  # where its headers start in the tar stream
    end: int  # where the next entry's start
    path: bytes  # relative to the archive's root; b"" is the root itself
    link: bytes  # a symlink's target, a hard link's target path; else b""

    @property
    def parent(self) -> bytes:
        return self.path.rpartition(b"/")[0]

    @property
    def name(self) -> bytes:
        return self.path.rpartition(b"/")[2]


def encode(entries: Iterable[Entry]) -> bytes:
    parts = [HEADER]
    for e in entries:
        if b"\0" in e.path or b"\0" in e.link or e.kind not in KINDS:
            raise ValueError(f"not an index entry: {e!r}")
        parts.append(b"%s\0%o\0%d\0%d\0%d\0%d\0%d\0%d\0%s\0%s\0" % (
            e.kind.encode(), e.mode, e.uid, e.gid, e.size, e.mtime_ns, e.offset, e.end, e.path, e.link))
    return gzip.compress(b"".join(parts), 6, mtime=0)


def write(path: Path, entries: Iterable[Entry]) -> None:
    write_atomic(path, encode(entries))


def decode(data: bytes, where: str) -> list[Entry]:
    try:
        raw = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise IndexRefused(f"{where}: not a readable index ({e})") from None
    if not raw.startswith(HEADER):
        raise IndexRefused(f"{where}: not a bkd archive index")
    fields = raw[len(HEADER):].split(b"\0")
    if fields[-1] != b"" or (len(fields) - 1) % FIELDS:
        raise IndexRefused(f"{where}: cut short")
    entries = []
    for start in range(0, len(fields) - 1, FIELDS):
        kind, mode, uid, gid, size, mtime, offset, end, path, link = fields[start:start + FIELDS]
        try:
            entry = Entry(kind.decode(), int(mode, 8), int(uid), int(gid), int(size), int(mtime), int(offset),
                          int(end), path if not path else relpath.check(path, where), link)
        except ValueError as e:
            raise IndexRefused(str(e) if "refusing" in str(e) else f"{where}: entry {start // FIELDS}: "
                               "not an index entry") from None
        if entry.kind not in KINDS or not 0 <= entry.offset <= entry.end:
            raise IndexRefused(f"{where}: entry {start // FIELDS}: not an index entry")
        entries.append(entry)
    return entries


def read(path: Path) -> list[Entry] | None:
    """The entries of an index file; None when there is none."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return decode(data, path.name)


def st_mode(entry: Entry) -> int:
    return KINDS[entry.kind] | entry.mode


class ArchiveTree:
    """An archive's entries as a tree to look into, the way tree/browse.py
    looks into a snapshot directory: a symlink stored in it is never a way
    through, and '..' is refused."""

    def __init__(self, entries: list[Entry]):
        self.entries = entries
        self.by_path = {e.path: i for i, e in enumerate(entries)}

    def _at(self, parts: list[bytes]) -> Entry | None:
        index = self.by_path.get(b"/".join(parts))
        return None if index is None else self.entries[index]

    def _directory(self, parts: list[bytes]) -> None:
        """Raise unless parts names a directory reached through directories only."""
        for depth in range(1, len(parts) + 1):
            entry = self._at(parts[:depth])
            where = "/" + b"/".join(parts[:depth]).decode(errors="surrogateescape")
            if entry is None:
                raise NotFound(f"no such path in the snapshot: {where}")
            if entry.kind == "l":
                raise InvalidArgument(f"invalid params: path: {where} is a symlink stored in the snapshot; "
                                      "bkd does not follow it")
            if entry.kind != "d":
                raise InvalidArgument(f"invalid params: path: {where} is not a directory")

    def entry(self, parts: list[bytes]) -> Entry:
        """The entry parts names (not followed if it is a symlink)."""
        self._directory(parts[:-1])
        entry = self._at(parts)
        if entry is None:
            raise NotFound(f"no such path in the snapshot: /{b'/'.join(parts).decode(errors='surrogateescape')}")
        return entry

    def size(self, entry: Entry) -> int:
        """A hard link's size is its target's, a symlink's its target's
        length (as lstat says); a directory's is 0 (tar keeps none)."""
        if entry.kind == "l":
            return len(entry.link)
        if entry.kind == "h":
            target = self.by_path.get(entry.link)
            return self.entries[target].size if target is not None else 0
        return entry.size

    def children(self, parts: list[bytes]) -> list[Entry]:
        """A directory's entries, sorted by name (as bytes)."""
        self._directory(parts)
        parent = b"/".join(parts)
        return sorted((e for e in self.entries if e.path and e.parent == parent), key=lambda e: e.name)

    def subtree(self, parts: list[bytes]) -> list[Entry]:
        """The entry parts names and everything under it, in the archive's order."""
        entry = self.entry(parts)
        if entry.kind != "d" or not parts:
            return [entry] if parts else list(self.entries)
        prefix = entry.path + b"/"
        return [entry] + [e for e in self.entries if e.path.startswith(prefix)]

    def ranges(self, parts: list[bytes]) -> list[tuple[int, int]]:
        """The byte ranges of the tar stream that restore parts: its
        directories on the way (their headers, so they keep their
        attributes), the subtree, and the earlier entries its hard links
        point at. Sorted, merged."""
        wanted = self.subtree(parts)
        inside = {e.path for e in wanted}
        extra = [self._at(parts[:depth]) for depth in range(1, len(parts))]
        if parts and self._at([]) is not None:
            extra.append(self._at([]))
        for entry in wanted:
            if entry.kind == "h" and entry.link not in inside and entry.link in self.by_path:
                target = self.entries[self.by_path[entry.link]]
                extra.append(target)
                inside.add(target.path)
        spans = sorted({(e.offset, e.end) for e in [*wanted, *extra] if e is not None})
        merged: list[tuple[int, int]] = []
        for start, end in spans:
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        return merged

    # ---- browse's three questions, asked of an archive ------------------------------

    def describe(self, entry: Entry) -> dict:
        name = b"/" if not entry.path else entry.name
        link = entry.link if entry.kind == "l" else None
        return browse.describe(name, st_mode(entry), self.size(entry), entry.mtime_ns / 1e9, link)

    def lookup(self, path: str) -> dict:
        parts = browse.components(path)
        entry = self.entry(parts) if parts else self._at([])
        if entry is None:  # an archive without a root entry still has a root
            return browse.describe(b"/", stat.S_IFDIR | 0o755, 0, 0)
        return {**self.describe(entry), **({"name": "/"} if not parts else {})}

    def list_dir(self, path: str, offset: int = 0, limit: int = browse.DEFAULT_PAGE) -> dict:
        children = self.children(browse.components(path))
        return browse.paged(children, offset, limit, [self.describe(e) for e in children[offset:offset + limit]])

    def top_level(self) -> list[bytes]:
        return [e.name for e in self.children([])]
