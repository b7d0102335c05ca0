"""SHA-256 manifests of snapshots, and verifying snapshots and archives against them.

A new snapshot's manifest is the previous one with only the files rsync
created or changed re-hashed: an unchanged file is the previous snapshot's
inode, so it keeps its checksum. The file is sorted by path, so that the
update finds each change by binary search instead of parsing every line."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import subprocess
import threading
from bisect import bisect_left
from collections.abc import Container, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from ..infra.fsutil import write_atomic
from ..tree import layout, relpath
from . import entropy

CHUNK = 1024 * 1024
Manifest = dict[bytes, tuple[str, int]]  # path (bytes, relative) → (sha256, size)


_buffers = threading.local()


def _digest(fd: int, abandoned: threading.Event | None = None,
            sample: entropy.Collector | None = None) -> str | None:
    """The SHA-256 of what fd reads from where it is to its end; None if
    `abandoned` was set meanwhile (a large file is not read to the end).
    Every checksum bkd computes goes through here; `sample` gathers the
    entropy sample from the chunks as they pass (no read of its own)."""
    # One buffer per thread: most files are small, and a fresh 1 MiB
    # buffer per read costs more than hashing them.
    if not hasattr(_buffers, "view"):
        _buffers.view = memoryview(bytearray(CHUNK))
    view, digest, position = _buffers.view, hashlib.sha256(), 0
    while count := os.readv(fd, [view]):
        digest.update(view[:count])
        if sample is not None:
            sample.feed(position, view[:count])
            position += count
        if abandoned is not None and abandoned.is_set():
            return None
    return digest.hexdigest()


def sha256_of(path: Path | bytes, dir_fd: int | None = None) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
    try:
        return _digest(fd)
    finally:
        os.close(fd)


def open_parent(root_fd: int, relative: bytes) -> tuple[int, bytes]:
    """An fd of relative's directory, reached one component at a time: paths
    in a snapshot may be longer than PATH_MAX allows in one string."""
    *dirs, name = relative.split(b"/")
    fd = os.dup(root_fd)
    for part in dirs:
        try:
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        finally:
            os.close(fd)
        fd = child
    return fd, name


def stat_and_hash(root_fd: int, relative: bytes) -> tuple[os.stat_result, str | None]:
    """lstat of root/relative, and its SHA-256 if it is a regular file."""
    fd, name = open_parent(root_fd, relative)
    try:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        return st, sha256_of(name, dir_fd=fd) if stat.S_ISREG(st.st_mode) else None
    finally:
        os.close(fd)


class Hashed(NamedTuple):
    """What one regular file held when it was hashed."""

    inode: int
    sha256: str
    size: int
    mtime_ns: int = 0
    entropy: float | None = None  # its sample's (pipeline/entropy.py), when one was asked for
    was: float | None = None  # the previous version's, sampled when this one looks random



def _staged_fd(root_fd: int, relative: bytes, flags: int) -> int:
    """Open a path of a tree rsync has just written: in one call, since rsync
    puts nothing below a symlink; the last component is never followed, and
    a path longer than the kernel takes is opened one directory at a time."""
    try:
        return os.open(relative, flags | os.O_NOFOLLOW, dir_fd=root_fd)
    except OSError as e:
        if e.errno != errno.ENAMETOOLONG:
            raise
    return open_beneath(root_fd, relative, flags)


def open_beneath(root_fd: int, relative: bytes, flags: int, mode: int = 0o600) -> int:
    """root/relative opened with flags, reached one directory at a time, no
    symlink followed on the way."""
    parent, name = open_parent(root_fd, relative)
    try:
        return os.open(name, flags | os.O_NOFOLLOW, mode, dir_fd=parent)
    finally:
        os.close(parent)


def hash_file(root_fd: int, relative: bytes, abandoned: threading.Event | None = None,
              sample: bool = False) -> Hashed | None:
    """The inode of root/relative (a tree rsync has written) and what it
    holds, read through one open file, so that the checksum belongs to that
    inode (with its entropy sample, taken as it is read, when sample); None
    if it is not a regular file (any more), or if `abandoned` was set
    meanwhile (its run failed: a large file is not read to the end)."""
    if abandoned is not None and abandoned.is_set():
        return None
    try:
        fd = _staged_fd(root_fd, relative, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        collector = entropy.Collector(st.st_size) if sample else None
        digest = _digest(fd, abandoned, collector)
    finally:
        os.close(fd)
    if digest is None:
        return None
    return Hashed(st.st_ino, digest, st.st_size, st.st_mtime_ns, collector.score() if collector else None)


def hash_files(root: Path, paths: Iterable[bytes], workers: int = 2,
               abandoned: threading.Event | None = None, sampled: Container[bytes] = ()) -> dict[bytes, Hashed]:
    """hash_file for many paths, on `workers` threads (hashlib releases the
    GIL); the paths in sampled get their entropy sample too."""
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        paths = list(paths)
        with ThreadPoolExecutor(workers) as pool:
            results = pool.map(lambda path: hash_file(root_fd, path, abandoned, path in sampled), paths)
            return {path: result for path, result in zip(paths, results) if result is not None}
    finally:
        os.close(root_fd)


HEADER = b"# bkd manifest v1: sha256 size path (backslash and newline escaped)\n"
_ESCAPED = re.compile(rb"\\(.)")


def escape(path: bytes) -> bytes:
    return path.replace(b"\\", b"\\\\").replace(b"\n", b"\\n") if b"\\" in path or b"\n" in path else path


def _unescaped(match: re.Match) -> bytes:
    return b"\n" if match[1] == b"n" else match[1]


def unescape(path: bytes) -> bytes:
    return _ESCAPED.sub(_unescaped, path) if b"\\" in path else path


class ManifestRefused(ValueError):
    """A manifest bkd will not use: a line it did not write, or a path outside the snapshot."""


def read(path: Path) -> Manifest | None:
    """A manifest's entries by path (None without one); what is in it is
    checked (see parse)."""
    lines = read_lines(path)
    return None if lines is None else parse(lines, path.name)


def parse(lines: list[bytes], where: str) -> Manifest:
    """A manifest's lines (read_lines) as entries by path. A line that is not
    ours, or names something outside the snapshot, refuses the whole manifest."""
    manifest = {}
    for number, line in enumerate(lines, 2):  # line 1 is the header
        if line:
            try:
                digest, size, name = line.split(b" ", 2)
                name = relpath.check(unescape(name), f"{where} line {number}")
                manifest[name] = (digest.decode(), int(size))
            except ValueError as e:
                raise ManifestRefused(str(e) if "refusing" in str(e) else
                                      f"{where} line {number}: not a manifest line") from None
    return manifest


def _line(name: bytes, digest: str, size: int) -> bytes:
    return b"%s %d %s" % (digest.encode(), size, escape(name))


def _path_of(line: bytes) -> bytes:
    # "<64 hex digits> <size> <path>": the path starts after the second space.
    # (Called for every probe of a binary search: _unescape inlined.)
    path = line[line.index(b" ", 65) + 1:]
    return _ESCAPED.sub(_unescaped, path) if b"\\" in path else path


def write(path: Path, manifest: Manifest, sync: bool = True) -> None:
    write_lines(path, sorted_lines(manifest), sync)


def write_lines(path: Path, lines: list[bytes], sync: bool = True) -> None:
    # One join, no copies of a many-megabyte result.
    write_atomic(path, b"\n".join([HEADER.rstrip(b"\n"), *lines, b""]), sync=sync)


def sorted_lines(manifest: Manifest) -> list[bytes]:
    return [_line(name, *entry) for name, entry in sorted(manifest.items())]


def position(lines: list[bytes], name: bytes) -> float:
    """Where name falls in the sorted manifest lines, from 0 to 1."""
    return bisect_left(lines, name, key=_path_of) / len(lines) if lines else 0.0


def lookup(lines: list[bytes], name: bytes) -> tuple[str, int] | None:
    """The entry of name in sorted manifest lines, if any."""
    index = bisect_left(lines, name, key=_path_of)
    if index < len(lines) and _path_of(lines[index]) == name:
        digest, size, _ = lines[index].split(b" ", 2)
        return digest.decode(), int(size)
    return None


def read_lines(path: Path) -> list[bytes] | None:
    """The entries of a manifest as its lines, in their order (sorted by path):
    the one reader of a manifest file (a plain line format, not JSON: a
    100,000-file manifest is read and written on every snapshot, and this is
    several times faster)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    lines = data.split(b"\n")
    start = 0
    while start < len(lines) and lines[start].startswith(b"#"):
        start += 1
    end = len(lines) - 1 if lines and not lines[-1] else len(lines)
    return lines[start:end]


def updated(lines: list[bytes], removed: Iterable[bytes], removed_trees: Iterable[bytes],
            added: dict[bytes, tuple[str, int]], dropped: dict[bytes, str] | None = None) -> tuple[list[bytes], int]:
    """The sorted manifest `lines` without the entries `removed` and everything
    under `removed_trees`, with `added` put in (replacing an entry of the same
    path). Costs a binary search per change, not a pass per change. Returns the
    new lines and how many old paths are gone for good; `dropped`, when given,
    gets the checksum of every old entry taken out (the change record's)."""
    drops = []  # index ranges of old lines to leave out
    position = {name: bisect_left(lines, name, key=_path_of) for name in {*removed, *added}}
    for name, index in position.items():
        if index < len(lines) and _path_of(lines[index]) == name:
            drops.append((index, index + 1))
    for tree in removed_trees:
        low, high = bisect_left(lines, tree + b"/", key=_path_of), bisect_left(lines, tree + b"0", key=_path_of)
        if low < high:
            drops.append((low, high))
    merged: list[list[int]] = []
    for low, high in sorted(drops):
        if merged and low <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], high)
        else:
            merged.append([low, high])
    gone = 0
    for low, high in merged:
        for index in range(low, high):
            path = _path_of(lines[index])
            gone += path not in added
            if dropped is not None:
                dropped[path] = lines[index][:64].decode()

    starts = [low for low, _high in merged]

    def kept_index(index: int) -> int:
        """Where an insertion at old index `index` lands among kept lines."""
        at = bisect_left(starts, index + 1) - 1  # the last dropped range starting at or before index
        return merged[at][1] if at >= 0 and index < merged[at][1] else index

    inserts = sorted((kept_index(position[name]), name) for name in added)
    result: list[bytes] = []
    keep_start, next_insert = 0, 0
    for low, high in [*merged, [len(lines), len(lines)]]:
        start = keep_start
        while next_insert < len(inserts) and inserts[next_insert][0] <= low:
            at, name = inserts[next_insert]
            result += lines[start:at]
            result.append(_line(name, *added[name]))
            start, next_insert = at, next_insert + 1
        result += lines[start:low]
        keep_start = high
    return result, gone


def _scan(dir_fd: int | None) -> tuple[dict[str, int], list[str]]:
    """Regular files (name → inode, from the directory entry: no stat) and
    subdirectories of an open directory."""
    files, dirs = {}, []
    if dir_fd is None:
        return files, dirs
    with os.scandir(dir_fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                dirs.append(entry.name)
            elif entry.is_file(follow_symlinks=False):
                files[entry.name] = entry.inode()
    return files, dirs


def open_dir(path: Path) -> int:
    """An fd of the directory at path, or -1 where there is none."""
    fd = open_directory(path)
    return -1 if fd is None else fd


def open_directory(name: str | bytes | Path | None, dir_fd: int | None = None) -> int | None:
    """An fd of the directory, or None where there is none (missing, or not a directory)."""
    if name is None:
        return None
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError:
        return None


def _walk_pair(tree: Path, other: Path | None) -> Iterator[tuple[bytes, int, int | None, int, str]]:
    """Every regular file of tree as (relative path, inode, inode of the
    regular file at the same path in other or None, its directory's fd, its
    name there), walked by directory fd: no symlink followed, no path too long.
    The one walk of a snapshot's tree (manifests and verify)."""
    root = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    stack = [(b"", root, open_directory(other))]
    try:
        while stack:
            prefix, fd, other_fd = stack.pop()
            try:
                files, dirs = _scan(fd)
                other_files, _ = _scan(other_fd)
                for name, inode in files.items():
                    yield prefix + os.fsencode(name), inode, other_files.get(name), fd, name
                for name in dirs:
                    child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                    stack.append((prefix + os.fsencode(name) + b"/", child,
                                  open_directory(name, other_fd) if other_fd is not None else None))
            finally:
                os.close(fd)
                if other_fd is not None:
                    os.close(other_fd)
    finally:
        for _, fd, other_fd in stack:
            os.close(fd)
            if other_fd is not None:
                os.close(other_fd)


def regular_files_at(tree: Path, other: Path, names: Iterable[bytes]) -> dict[bytes, tuple[int, int | None]]:
    """Which of names are regular files in tree (a tree rsync has written):
    name → (inode, inode of the regular file at the same path in other, or None)."""
    found = {}
    tree_fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    try:
        other_fd = os.open(other, os.O_RDONLY | os.O_DIRECTORY)
    except BaseException:
        os.close(tree_fd)
        raise
    try:
        for name in names:
            inodes = []
            for root_fd in (tree_fd, other_fd):
                try:
                    fd = _staged_fd(root_fd, name, os.O_PATH)
                    try:
                        st = os.fstat(fd)
                    finally:
                        os.close(fd)
                    inodes.append(st.st_ino if stat.S_ISREG(st.st_mode) else None)
                except OSError:  # missing, or under something that is not a directory
                    inodes.append(None)
            if inodes[0] is not None:
                found[name] = (inodes[0], inodes[1])
    finally:
        os.close(tree_fd)
        os.close(other_fd)
    return found


def by_inode(tree: Path, previous_tree: Path | None, previous: Manifest | None,
             known: dict[bytes, Hashed] | None = None,
             abandoned: threading.Event | None = None) -> tuple[Manifest, int]:
    """The manifest of tree from the tree itself: a file that is the previous
    snapshot's inode keeps its checksum, one hashed earlier (known) keeps that
    checksum if it is still the same inode, and every other file is hashed now.
    Returns the manifest and the number of files hashed here."""
    previous, known = previous or {}, known or {}
    manifest, to_hash = {}, []
    for relative, inode, previous_inode, _fd, _name in _walk_pair(tree, previous_tree if previous else None):
        if inode == previous_inode and relative in previous:
            manifest[relative] = previous[relative]
        elif relative in known and known[relative].inode == inode:
            manifest[relative] = (known[relative].sha256, known[relative].size)
        else:
            to_hash.append(relative)
    hashed = hash_files(tree, to_hash, abandoned=abandoned)
    for relative, found in hashed.items():
        manifest[relative] = (found.sha256, found.size)
    return manifest, len(hashed)


def verify_tree(tree: Path, manifest: Manifest) -> tuple[int, list[dict]]:
    """Re-hash every regular file; report missing, extra and changed ones."""
    mismatches, checked, seen = [], 0, set()
    for relative, _inode, _other, dir_fd, name in _walk_pair(tree, None):
        actual = sha256_of(name, dir_fd=dir_fd)
        seen.add(relative)
        expected = manifest.get(relative)
        if expected is None:
            mismatches.append({"path": os.fsdecode(relative), "problem": "extra"})
            continue
        checked += 1
        if actual != expected[0]:
            mismatches.append({"path": os.fsdecode(relative), "problem": "changed",
                               "expected": expected[0], "actual": actual})
    mismatches.sort(key=lambda m: os.fsencode(m["path"]))  # the walk's order is the directories'
    for relative in sorted(set(manifest) - seen):
        mismatches.append({"path": os.fsdecode(relative), "problem": "missing"})
    return checked, mismatches


def differences(actual: list[bytes], expected: list[bytes]) -> list[dict]:
    """How a tree's manifest lines (actual) differ from the lines it should
    have (expected), as verify reports them: changed, extra and missing files.
    Equal lines (the usual case) cost one comparison."""
    if actual == expected:
        return []
    have, want = parse(actual, "the copy's manifest"), parse(expected, "the expected manifest")
    found = []
    for path in sorted(have.keys() | want.keys()):
        got, wanted = have.get(path), want.get(path)
        if wanted is None:
            found.append({"path": os.fsdecode(path), "problem": "extra"})
        elif got is None:
            found.append({"path": os.fsdecode(path), "problem": "missing"})
        elif got != wanted:
            found.append({"path": os.fsdecode(path), "problem": "changed", "expected": wanted[0], "actual": got[0]})
    return found


def identity(tree: Path) -> tuple[int, int] | None:
    """Which directory tree is now (device, inode); None if there is none."""
    try:
        st = os.stat(tree, follow_symlinks=False)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def _verify_one(tree: Path, manifest_file: Path | None) -> tuple[int, list[dict]]:
    try:
        recorded = read(manifest_file) if manifest_file else None
    except ManifestRefused as e:
        return 0, [{"path": "/", "problem": str(e)}]
    if recorded is None:
        return 0, [{"path": "/", "problem": "no manifest recorded"}]
    return verify_tree(tree, recorded)


def verify_trees(trees: list[tuple[str, Path, Path | None]]) -> dict:
    """Every (name, tree, its manifest) re-hashed against that manifest. A
    tree pruned meanwhile (its directory gone, or another one by now) is
    `gone`, not damage: whatever its check saw, a manifest already moved
    away or files deleted under the walk, is dropped."""
    checked, mismatches, results = 0, [], {}
    for name, tree, manifest_file in trees:
        before = identity(tree)
        if before is None:
            continue
        try:
            results[name] = (tree, before, *_verify_one(tree, manifest_file))
        except OSError:
            if identity(tree) == before:
                raise
    verified = [name for name, (tree, before, _, _) in results.items() if identity(tree) == before]
    for name in verified:
        _, _, count, found = results[name]
        checked += count
        mismatches += [{"snapshot": name, **m} for m in found]
    return {"checked": checked, "verified": verified, "gone": [name for name, _, _ in trees if name not in verified],
            "mismatches": mismatches}


def verify_snapshots(hourly: Path, meta: Path, names: list[str], archive_files: list[Path]) -> dict:
    """Every named snapshot against its manifest (see verify_trees), and the archives against
    their checksums."""
    result = verify_trees([(name, hourly / name, meta / f"{name}.manifest") for name in names])
    checked, mismatches = result["checked"], result["mismatches"]
    for archive in archive_files:
        checked += 1
        problem = verify_archive(archive)
        if problem:
            mismatches.append({"snapshot": None, **problem})
    return {"ok": not mismatches, "checked": checked, "snapshots": result["verified"], "gone": result["gone"],
            "archives": [a.name for a in archive_files], "mismatches": mismatches}


def hash_sample_idle(tree: Path, recorded: Manifest, paths: list[bytes]) -> list[dict]:
    """Re-hash paths of tree at idle I/O priority (this thread only: ioprio is
    per thread on Linux); report the ones that differ from recorded."""
    subprocess.run(["ionice", "-c", "3", "-p", str(threading.get_native_id())], capture_output=True)
    mismatches = []
    root_fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for path in paths:
            try:
                _st, actual = stat_and_hash(root_fd, path)
            except FileNotFoundError:
                mismatches.append({"path": os.fsdecode(path), "problem": "missing"})
                continue
            if actual != recorded[path][0]:
                mismatches.append({"path": os.fsdecode(path), "problem": "changed",
                                   "expected": recorded[path][0], "actual": actual})
    finally:
        os.close(root_fd)
    return mismatches


def checksum_path(archive: Path) -> Path:
    return layout.sidecar(archive, ".sha256")


def write_checksum(archive: Path) -> str:
    digest = sha256_of(archive)
    write_atomic(checksum_path(archive), f"{digest}  {archive.name}\n".encode(), mode=0o600)
    return digest


def verify_archive(archive: Path) -> dict | None:
    """None if the archive matches its recorded checksum, else the mismatch."""
    try:
        expected = checksum_path(archive).read_text().split()[0]
    except (FileNotFoundError, IndexError):
        return {"path": f"archives/{archive.name}", "problem": "no checksum recorded"}
    actual = sha256_of(archive)
    if actual != expected:
        return {"path": f"archives/{archive.name}", "problem": "changed", "expected": expected, "actual": actual}
    return None


def bytes_under(path: Path, prefix: bytes) -> int | None:
    """Total size of the regular files at or under prefix ('' is everything),
    from a manifest; None without one."""
    recorded = read(path)
    if recorded is None:
        return None
    if not prefix:
        return sum(size for _digest, size in recorded.values())
    inside = prefix + b"/"
    return sum(size for name, (_digest, size) in recorded.items() if name == prefix or name.startswith(inside))
