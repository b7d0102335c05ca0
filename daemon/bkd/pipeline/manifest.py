"""SHA-256 manifests of snapshots, and verifying snapshots and archives against them.

A new snapshot's manifest is the previous one with only the files rsync
created or changed re-hashed: an unchanged file is the previous snapshot's
inode, so it keeps its checksum."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from ..fsutil import write_atomic

CHUNK = 1024 * 1024
Manifest = dict[bytes, tuple[str, int]]  # path (bytes, relative) → (sha256, size)


def sha256_of(path: Path | bytes) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read(path: Path) -> Manifest | None:
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return None
    manifest = {}
    for line in lines:
        record = json.loads(line)
        manifest[os.fsencode(record["path"])] = (record["sha256"], record["size"])
    return manifest


def write(path: Path, manifest: Manifest) -> None:
    lines = (json.dumps({"path": os.fsdecode(p), "sha256": h, "size": s}) for p, (h, s) in sorted(manifest.items()))
    write_atomic(path, ("\n".join(lines) + "\n").encode() if manifest else b"")


def regular_files(root: Path):
    """(relative path as bytes, stat) of every regular file under root; symlinks are not followed."""
    base = os.fsencode(root)
    for directory, _dirs, files in os.walk(base):
        for name in files:
            full = os.path.join(directory, name)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode):
                yield os.path.relpath(full, base), st


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
    for name in changed:
        raw = os.fsencode(name)
        full = os.path.join(os.fsencode(tree), raw)
        st = os.lstat(full)
        if stat.S_ISREG(st.st_mode):
            manifest[raw] = (sha256_of(full), st.st_size)
            hashed += 1
    return manifest, hashed


def by_inode(tree: Path, previous_tree: Path | None, previous: Manifest | None) -> tuple[Manifest, int]:
    """Walk the new tree; reuse a checksum where the file is the previous snapshot's inode."""
    manifest, hashed = {}, 0
    old_base = os.fsencode(previous_tree) if previous_tree else None
    for relative, st in regular_files(tree):
        if previous and old_base and relative in previous:
            try:
                old = os.lstat(os.path.join(old_base, relative))
                if (old.st_ino, old.st_dev) == (st.st_ino, st.st_dev):
                    manifest[relative] = previous[relative]
                    continue
            except FileNotFoundError:
                pass
        manifest[relative] = (sha256_of(os.path.join(os.fsencode(tree), relative)), st.st_size)
        hashed += 1
    return manifest, hashed


def verify_tree(tree: Path, manifest: Manifest) -> tuple[int, list[dict]]:
    """Re-hash every regular file; report missing, extra and changed ones."""
    mismatches, checked, seen = [], 0, set()
    for relative, st in regular_files(tree):
        seen.add(relative)
        expected = manifest.get(relative)
        if expected is None:
            mismatches.append({"path": os.fsdecode(relative), "problem": "extra"})
            continue
        checked += 1
        actual = sha256_of(os.path.join(os.fsencode(tree), relative))
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
        recorded = read(meta / f"{name}.manifest")
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
