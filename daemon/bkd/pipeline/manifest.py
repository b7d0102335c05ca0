"""SHA-256 manifests of snapshots, and verifying snapshots and archives against them.

A new snapshot's manifest is the previous one with only the files rsync
created or changed re-hashed: an unchanged file is the previous snapshot's
inode, so it keeps its checksum."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
import threading
from pathlib import Path

from .. import relpath
from ..fsutil import write_atomic

CHUNK = 1024 * 1024
Manifest = dict[bytes, tuple[str, int]]  # path (bytes, relative) → (sha256, size)


def sha256_of(path: Path | bytes, dir_fd: int | None = None) -> str:
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
    with open(fd, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _open_parent(root_fd: int, relative: bytes) -> tuple[int, bytes]:
    """An fd of relative's directory, reached one component at a time: paths
    in a snapshot may be longer than PATH_MAX allows in one string."""
    *dirs, name = relative.split(b"/")
    fd = os.dup(root_fd)
    for part in dirs:
        child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        os.close(fd)
        fd = child
    return fd, name


def stat_and_hash(root_fd: int, relative: bytes) -> tuple[os.stat_result, str | None]:
    """lstat of root/relative, and its SHA-256 if it is a regular file."""
    fd, name = _open_parent(root_fd, relative)
    try:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        return st, sha256_of(name, dir_fd=fd) if stat.S_ISREG(st.st_mode) else None
    finally:
        os.close(fd)


HEADER = b"# bkd manifest v1: sha256 size path (backslash and newline escaped)\n"
_ESCAPED = re.compile(rb"\\(.)")


def _escape(path: bytes) -> bytes:
    return path.replace(b"\\", b"\\\\").replace(b"\n", b"\\n") if b"\\" in path or b"\n" in path else path


def _unescape(path: bytes) -> bytes:
    return _ESCAPED.sub(lambda m: b"\n" if m[1] == b"n" else m[1], path) if b"\\" in path else path


class ManifestRefused(ValueError):
    """A manifest bkd will not use: a line it did not write, or a path outside the snapshot."""


def read(path: Path) -> Manifest | None:
    """A plain line format, not JSON: a 100,000-file manifest is read and
    written on every snapshot, and this is several times faster."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    manifest = {}
    for number, line in enumerate(data.split(b"\n"), 1):
        if line and not line.startswith(b"#"):
            try:
                digest, size, name = line.split(b" ", 2)
                name = relpath.check(_unescape(name), f"{path.name} line {number}")
                manifest[name] = (digest.decode(), int(size))
            except ValueError as e:  # a line that is not ours, or names something outside the snapshot
                raise ManifestRefused(str(e) if "refusing" in str(e) else
                                      f"{path.name} line {number}: not a manifest line") from None
    return manifest


def write(path: Path, manifest: Manifest, sync: bool = True) -> None:
    lines = [b"%s %d %s" % (digest.encode(), size, _escape(name))
             for name, (digest, size) in sorted(manifest.items())]
    write_atomic(path, HEADER + b"\n".join(lines) + (b"\n" if lines else b""), sync=sync)


def regular_files(root: Path, hashing: bool = False):
    """(relative path, stat, sha256 or None) of every regular file under root,
    walked by directory fd (no symlink followed, no path too long)."""
    for directory, _dirs, files, dir_fd in os.fwalk(os.fsencode(root)):
        prefix = os.path.relpath(directory, os.fsencode(root))
        for name in files:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode):
                relative = name if prefix == b"." else prefix + b"/" + name
                yield relative, st, sha256_of(name, dir_fd=dir_fd) if hashing else None


def from_changes(tree: Path, previous: Manifest, changed: list[str], deleted: list[str]) -> tuple[Manifest, int]:
    """The previous manifest, minus what rsync deleted, plus what it wrote, re-hashed."""
    manifest = dict(previous)
    for name in deleted:
        raw = os.fsencode(name).rstrip(b"/")
        manifest.pop(raw, None)
        prefix = raw + b"/"
        for path in [p for p in manifest if p.startswith(prefix)]:
            del manifest[path]
    hashed = 0
    root_fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in changed:
            raw = os.fsencode(name)
            st, digest = stat_and_hash(root_fd, raw)
            if digest is not None:
                manifest[raw] = (digest, st.st_size)
                hashed += 1
    finally:
        os.close(root_fd)
    return manifest, hashed


def by_inode(tree: Path, previous_tree: Path | None, previous: Manifest | None) -> tuple[Manifest, int]:
    """Walk the new tree; reuse a checksum where the file is the previous snapshot's inode."""
    manifest, hashed = {}, 0
    old_fd = os.open(previous_tree, os.O_RDONLY | os.O_DIRECTORY) if previous and previous_tree else None
    root_fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for relative, st, _ in regular_files(tree):
            if old_fd is not None and relative in previous:
                try:
                    fd, name = _open_parent(old_fd, relative)
                    try:
                        old = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    finally:
                        os.close(fd)
                    if (old.st_ino, old.st_dev) == (st.st_ino, st.st_dev):
                        manifest[relative] = previous[relative]
                        continue
                except OSError:
                    pass
            manifest[relative] = (stat_and_hash(root_fd, relative)[1], st.st_size)
            hashed += 1
    finally:
        os.close(root_fd)
        if old_fd is not None:
            os.close(old_fd)
    return manifest, hashed


def verify_tree(tree: Path, manifest: Manifest) -> tuple[int, list[dict]]:
    """Re-hash every regular file; report missing, extra and changed ones."""
    mismatches, checked, seen = [], 0, set()
    for relative, _st, actual in regular_files(tree, hashing=True):
        seen.add(relative)
        expected = manifest.get(relative)
        if expected is None:
            mismatches.append({"path": os.fsdecode(relative), "problem": "extra"})
            continue
        checked += 1
        if actual != expected[0]:
            mismatches.append({"path": os.fsdecode(relative), "problem": "changed",
                               "expected": expected[0], "actual": actual})
    for relative in sorted(set(manifest) - seen):
        mismatches.append({"path": os.fsdecode(relative), "problem": "missing"})
    return checked, mismatches


def verify_snapshots(hourly: Path, meta: Path, names: list[str], archive_files: list[Path]) -> dict:
    """Every named snapshot against its manifest, and the archives against their checksums."""
    checked, mismatches = 0, []
    for name in names:
        try:
            recorded = read(meta / f"{name}.manifest")
        except ManifestRefused as e:
            mismatches.append({"snapshot": name, "path": "/", "problem": str(e)})
            continue
        if recorded is None:
            mismatches.append({"snapshot": name, "path": "/", "problem": "no manifest recorded"})
            continue
        count, found = verify_tree(hourly / name, recorded)
        checked += count
        mismatches += [{"snapshot": name, **m} for m in found]
    for archive in archive_files:
        checked += 1
        problem = verify_archive(archive)
        if problem:
            mismatches.append({"snapshot": None, **problem})
    return {"ok": not mismatches, "checked": checked, "snapshots": names,
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
    return archive.with_name(archive.name + ".sha256")


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
