"""The per-snapshot change record, `meta/NAME.changes` (docs/design.md, "The
change record"): what is new in a snapshot against the previous complete
one, by inode, whatever way the run took. The anomaly profile is computed
from it, and the version index (`find`, `du`) reads it.

    # bkd changes 1 previous=PREV
    OP TYPE SIZE MTIME INODE SHA256 PATH

OP is `+` (a path PREV does not have), `-` (a path PREV has and NAME does
not: PREV's entry) or `~` (a path both have, a new inode in NAME); a
directory is listed only when it is new, gone or changes type; everything
under a path gone, or no longer a directory, is listed `-` too, and
everything under a new directory `+`. An entry whose inode NAME shares with
PREV is never listed. Sorted by path (bytes), escaped as in manifests.

How it is computed: an incremental run knows every path it touched (the
compare's list: nothing else in the linked copy is written), so only those
are looked at, in both trees, with the trees below the ones that appear or
go; any other run (a first pull, a resumed one, a one-pass fallback) walks
both trees by directory fd and compares inodes. Either way each entry is
read from the tree itself (lstat, never through a symlink), and checksums
come from the two manifests."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from ..infra.fsutil import write_atomic
from ..tree import relpath
from . import manifest

VERSION = 1
HEADER = b"# bkd changes %d previous=%s"
_TYPES = {stat.S_IFREG: "f", stat.S_IFDIR: "d", stat.S_IFLNK: "l", stat.S_IFCHR: "c", stat.S_IFBLK: "b",
          stat.S_IFIFO: "p", stat.S_IFSOCK: "s"}


class Side(NamedTuple):
    """One tree's entry at a path."""

    type: str
    size: int
    mtime_ns: int
    inode: int
    sha256: str | None = None  # regular files: from the tree's manifest


class Change(NamedTuple):
    """A path whose entry differs between PREV (old) and NAME (new). A tuple
    (made and sorted by the hundred thousand on a first pull): sorting a
    list of them sorts by path, which is unique."""

    path: bytes
    old: Side | None
    new: Side | None

    @property
    def op(self) -> str:
        return "+" if self.old is None else "-" if self.new is None else "~"

    def line(self) -> bytes:
        side = self.new or self.old
        return _line(_OPS[self.old is None, self.new is None], _TYPE_BYTES[side.type], side.size, side.mtime_ns,
                     side.inode, side.sha256, self.path)


def _line(op: bytes, kind: bytes, size: int, mtime_ns: int, inode: int, sha256: str | None, path: bytes) -> bytes:
    """One record line; the path escaped as in manifests (only a backslash or a newline needs it)."""
    if b"\\" in path or b"\n" in path:
        path = manifest.escape(path)
    return b"%s %s %d %d %d %s %s" % (op, kind, size, mtime_ns, inode, (sha256 or "-").encode(), path)


_OPS = {(True, False): b"+", (False, True): b"-", (False, False): b"~"}
_TYPE_BYTES = {kind: kind.encode() for kind in (*_TYPES.values(), "?")}


def type_of(mode: int) -> str:
    return _TYPES.get(stat.S_IFMT(mode), "?")


def _side(st: os.stat_result) -> Side:
    return Side(type_of(st.st_mode), st.st_size, st.st_mtime_ns, st.st_ino)


class Tree:
    """lstat of paths in one snapshot tree, reached one directory at a time by
    fd with O_NOFOLLOW (never through a symlink, however long the path). The
    paths come sorted, so the chain of directory fds of the last one is
    kept and reused."""

    def __init__(self, root: Path):
        self.root = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        self.chain: list[tuple[bytes, int]] = []  # (component, fd), from the root down

    def close(self) -> None:
        for _, fd in self.chain:
            os.close(fd)
        self.chain = []
        os.close(self.root)

    def directory(self, parts: list[bytes]) -> int | None:
        """An fd of the directory at parts (valid until the next call), or None."""
        keep = 0
        while keep < min(len(parts), len(self.chain)) and self.chain[keep][0] == parts[keep]:
            keep += 1
        for _, fd in self.chain[keep:]:
            os.close(fd)
        del self.chain[keep:]
        for part in parts[keep:]:
            parent = self.chain[-1][1] if self.chain else self.root
            try:
                fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
            except OSError:  # missing, not a directory, or a symlink
                return None
            self.chain.append((part, fd))
        return self.chain[-1][1] if self.chain else self.root

    def lstat(self, path: bytes) -> os.stat_result | None:
        *parents, name = path.split(b"/")
        fd = self.directory(parents)
        if fd is None:
            return None
        try:
            return os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            return None

    def open(self, path: bytes) -> int | None:
        """An fd of the regular file at path, for reading; None if there is none."""
        *parents, name = path.split(b"/")
        fd = self.directory(parents)
        if fd is None:
            return None
        try:
            opened = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
        except OSError:
            return None
        if not stat.S_ISREG(os.fstat(opened).st_mode):
            os.close(opened)
            return None
        return opened

    def below(self, path: bytes) -> Iterator[tuple[bytes, os.DirEntry]]:
        """Every entry under the directory path (b"" is the root), depth first;
        an entry can be stat'ed only before the next one is asked for."""
        fd = self.directory(path.split(b"/") if path else [])
        if fd is None:
            return
        yield from _walk(os.dup(fd), path + b"/" if path else b"")


def _walk(fd: int, prefix: bytes) -> Iterator[tuple[bytes, os.DirEntry]]:
    """(path, its directory entry) under an open directory (fd, closed here), depth first."""
    stack = [(prefix, fd)]
    try:
        while stack:
            prefix, fd = stack.pop()
            try:
                with os.scandir(fd) as entries:
                    for entry in entries:
                        path = prefix + entry.name.encode("utf-8", "surrogateescape")  # os.fsencode, inlined
                        yield path, entry
                        if entry.is_dir(follow_symlinks=False):
                            try:
                                child = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                            except OSError:
                                continue
                            stack.append((path + b"/", child))
            finally:
                os.close(fd)
    finally:
        for _, fd in stack:
            os.close(fd)


class Sums:
    """Checksums of one tree's regular files: what the run knows already (the
    files it hashed or took out of a manifest), else its manifest, as sorted
    lines (a binary search) or parsed."""

    def __init__(self, lines: list[bytes] | None = None, parsed: manifest.Manifest | None = None,
                 known: dict[bytes, str] | None = None):
        self.lines, self.parsed, self.known = lines or [], parsed or {}, known or {}

    def __call__(self, path: bytes) -> str | None:
        found = self.known.get(path)
        if found is None and (entry := self.parsed.get(path) or manifest.lookup(self.lines, path)):
            found = entry[0]
        return found


def compute(new_root: Path, old_root: Path | None, new_sums: Sums, old_sums: Sums,
            candidates: Iterable[bytes] | None = None,
            hashed: dict[bytes, manifest.Hashed] | None = None) -> list[Change]:
    """The changes of new_root against old_root (None: a first snapshot, all
    new), sorted by path. candidates: every path the run may have changed
    (an incremental run's list), or None to compare the whole trees. hashed:
    what the run learned of files as it hashed them (spares a stat each)."""
    found: dict[bytes, Change] = {}
    new_tree = Tree(new_root)
    old_tree = Tree(old_root) if old_root is not None else None
    hashed = hashed or {}
    try:
        if old_tree is None:
            every = [Change(path, None, _new_side(path, entry, new_sums, hashed))
                     for path, entry in new_tree.below(b"")]
            every.sort()
            return every
        else:
            differ = _Differ(new_tree, old_tree, new_sums, old_sums, found)
            if candidates is None:
                differ.whole()
            else:
                for path in sorted(set(candidates)):
                    if path and path != b"." and relpath.inside(path):
                        differ.at(path)
    finally:
        new_tree.close()
        if old_tree is not None:
            old_tree.close()
    return [found[path] for path in sorted(found)]


def first_pull(root: Path, sums: Sums, hashed: dict[bytes, manifest.Hashed], listed: list[tuple[bytes, str]]
               ) -> tuple[list[bytes], dict[str, int]]:
    """A first pull's record lines (sorted, no header) straight from rsync's
    own list, with how many files and directories it holds and the files'
    bytes: into an empty directory rsync writes each path once, so a file
    it wrote and the run hashed is known (inode, size, mtime as rsync left
    it); anything else is stat'ed (directories get their times last), and a
    name that is not there (a line the sender made up) is not listed. No
    objects per entry: a first pull has them by the hundred thousand."""
    rows = []  # (path, type, size, mtime, inode, sha256)
    tree = Tree(root)
    try:
        for path, kind in listed:
            known = hashed.get(path) if kind == "f" else None
            if known is not None and known.mtime_ns:
                rows.append((path, b"f", known.size, known.mtime_ns, known.inode, known.sha256))
            elif path != b"." and (st := tree.lstat(path)) is not None:
                side = _side(st)
                rows.append((path, _TYPE_BYTES[side.type], side.size, side.mtime_ns, side.inode,
                             (sums(path) if side.type == "f" else None) or "-"))
    finally:
        tree.close()
    rows.sort()
    counts = {"files": 0, "dirs": 0, "bytes": 0}
    lines = []
    for path, kind, size, mtime, inode, digest in rows:
        if kind == b"f":
            counts["files"] += 1
            counts["bytes"] += size
        elif kind == b"d":
            counts["dirs"] += 1
        if b"\\" in path or b"\n" in path:
            path = manifest.escape(path)
        lines.append(b"+ %s %d %d %d %s %s" % (kind, size, mtime, inode, digest.encode(), path))
    return lines, counts


def _new_side(path: bytes, entry: os.DirEntry, sums: Sums, hashed: dict[bytes, manifest.Hashed]) -> Side:
    """A new tree's entry: a regular file the run hashed is known by its
    inode (its size and mtime as rsync left them), anything else is stat'ed."""
    known = hashed.get(path)
    if known is not None and known.mtime_ns and entry.inode() == known.inode and entry.is_file(follow_symlinks=False):
        return Side("f", known.size, known.mtime_ns, known.inode, known.sha256)
    side = _side(entry.stat(follow_symlinks=False))
    return side._replace(sha256=sums(path)) if side.type == "f" else side


class _Differ:
    def __init__(self, new: Tree, old: Tree, new_sums: Sums, old_sums: Sums, found: dict[bytes, Change]):
        self.new, self.old, self.new_sums, self.old_sums, self.found = new, old, new_sums, old_sums, found

    def _with_sum(self, side: Side, path: bytes, sums: Sums) -> Side:
        return side._replace(sha256=sums(path)) if side.type == "f" else side

    def at(self, path: bytes, recurse: bool = False) -> None:
        """Compare one path in both trees; the trees under a path that
        appears, goes or stops being a directory are listed whole. recurse:
        also compare what is under a directory that stays one (the whole walk)."""
        if path in self.found:
            return
        new, old = self.new.lstat(path), self.old.lstat(path)
        if new is None and old is None:
            return
        if new is not None and old is not None and (new.st_ino, new.st_dev) == (old.st_ino, old.st_dev):
            return  # the same inode: unchanged (linked)
        new_dir = new is not None and stat.S_ISDIR(new.st_mode)
        old_dir = old is not None and stat.S_ISDIR(old.st_mode)
        if new_dir and old_dir:
            if recurse:
                self._children(path)
            return  # a directory that stays one is never listed
        self.found[path] = Change(path, old and self._with_sum(_side(old), path, self.old_sums),
                                  new and self._with_sum(_side(new), path, self.new_sums))
        if old_dir:
            self._all(self.old, path, gone=True)
        if new_dir:
            self._all(self.new, path, gone=False)

    def _all(self, tree: Tree, path: bytes, gone: bool) -> None:
        """Everything under path in one tree: gone (old) or new."""
        sums = self.old_sums if gone else self.new_sums
        for below, entry in tree.below(path):  # each entry read while its directory is open
            side = self._with_sum(_side(entry.stat(follow_symlinks=False)), below, sums)
            self.found[below] = Change(below, side, None) if gone else Change(below, None, side)

    def _children(self, path: bytes) -> None:
        names = set()
        for tree in (self.new, self.old):
            fd = tree.directory(path.split(b"/") if path else [])
            if fd is not None:
                names.update(os.fsencode(name) for name in os.listdir(fd))
        prefix = path + b"/" if path else b""
        for name in sorted(names):
            self.at(prefix + name, recurse=True)

    def whole(self) -> None:
        self._children(b"")


def lines(previous: str | None, changes: list[Change], made: list[bytes] | None = None) -> list[bytes]:
    """The record's lines: its header, then each change's (or the lines made already: first_pull)."""
    return [HEADER % (VERSION, (previous or "-").encode()), *(made if made is not None else
                                                            (change.line() for change in changes))]


def write(path: Path, previous: str | None, changes: list[Change], sync: bool = True,
          made: list[bytes] | None = None) -> None:
    """Written whole (write-then-rename); sync=False leaves the flush to the
    syncfs of the snapshot's commit."""
    write_atomic(path, b"\n".join([*lines(previous, changes, made), b""]), sync=sync)


class Entry(NamedTuple):
    """One line of a change record, as a reader gets it (or as the version
    index's walk of two trees computes it, with `blocks` then)."""

    op: str  # + new path, ~ new inode at a path both have, - gone
    type: str  # f d l c b p s
    size: int
    mtime_ns: int
    ino: int  # in NAME (for -: in PREV)
    sha256: str | None  # regular files only
    path: bytes  # relative to the snapshot's root
    blocks: int | None = None  # allocated bytes (st_blocks * 512), when known (a walk knows; a record does not)


class RecordRefused(ValueError):
    """A change record bkd will not use: a line it did not write, or a path outside the snapshot."""


_READ_TYPES = frozenset("fdlcbps")


def encode(previous: str | None, entries: list[Entry]) -> bytes:
    """A record of entries, as the snapshot run writes one (sorted by path, bytewise)."""
    return b"\n".join([HEADER % (VERSION, (previous or "-").encode()),
                        *(_line(e.op.encode(), e.type.encode(), e.size, e.mtime_ns, e.ino, e.sha256, e.path)
                          for e in sorted(entries, key=lambda e: e.path)), b""])


def parse(data: bytes, where: str) -> tuple[str | None, list[Entry]]:
    """(the snapshot it is relative to, or None for a first snapshot; its entries)."""
    head, _, body = data.partition(b"\n")
    prefix = b"# bkd changes %d previous=" % VERSION
    if not head.startswith(prefix):
        raise RecordRefused(f"{where}: not a change record (version {VERSION})")
    previous = head[len(prefix):].decode(errors="replace")
    entries = []
    for number, line in enumerate(body.split(b"\n"), 2):
        if not line:
            continue
        try:
            op, kind, size, mtime, inode, digest, name = line.split(b" ", 6)
            op, kind, sha = op.decode(), kind.decode(), digest.decode()
            if op not in ("+", "-", "~") or kind not in _READ_TYPES or (kind == "f") != (sha != "-") \
                    or (sha != "-" and len(sha) != 64):
                raise ValueError
            entries.append(Entry(op, kind, int(size), int(mtime), int(inode), None if sha == "-" else sha,
                                 relpath.check(manifest.unescape(name), f"{where} line {number}")))
        except (ValueError, UnicodeDecodeError) as e:
            raise RecordRefused(str(e) if "refusing" in str(e) else f"{where} line {number}: "
                                "not a change record line") from None
    return (None if previous == "-" else previous), entries


def read(path: Path) -> tuple[str | None, list[Entry]] | None:
    """(previous, entries) of a snapshot's change record; None without one."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return parse(data, path.name)
