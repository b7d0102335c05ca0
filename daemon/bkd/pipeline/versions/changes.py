"""The per-snapshot change record, as the version index reads it (the
record itself, its reader and writer: pipeline/changes.py).

`meta/NAME.changes` (its format is in docs/design.md, "The change record")
lists what NAME holds that the snapshot before it did not, by path and inode:
an entry of a new path (`+`), a path whose entry is a new inode (`~`), a
path that is gone (`-`, with the gone entry's fields). The snapshot run
writes it; the index reads it. For a snapshot without one (made before
records were kept, or whose record is damaged, or relative to another
snapshot than the one the index needs), `between` computes the same records
from the two trees and their manifests: the rebuild's path, walking both
trees by directory descriptor and stat-ing only what differs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from .. import manifest
from ..changes import Entry, type_of

# ---- the same records, from the two trees ------------------------------------------------

def _scan(fd: int | None) -> dict[bytes, tuple[int, bool]]:
    """name → (inode, is a directory), from the directory's entries: no stat."""
    if fd is None:
        return {}
    found = {}
    with os.scandir(fd) as entries:
        for entry in entries:
            found[os.fsencode(entry.name)] = (entry.inode(), entry.is_dir(follow_symlinks=False))
    return found


def _open(name: bytes, dir_fd: int | None) -> int | None:
    """The directory name in dir_fd (never through a symlink); None where there is none."""
    return manifest.open_directory(name, dir_fd) if dir_fd is not None else None


def _record(op: str, dir_fd: int, name: bytes, path: bytes, lines: list[bytes] | None) -> Entry:
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    kind = type_of(st.st_mode)
    try:
        entry = manifest.lookup(lines, path) if kind == "f" and lines else None
    except ValueError:  # a manifest line bkd did not write: verify reports it; the index goes without
        entry = None
    return Entry(op, kind, st.st_size, st.st_mtime_ns, st.st_ino, entry[0] if entry else None, path,
                  st.st_blocks * 512)


def _walk(tree: Path, previous: Path | None, lines: list[bytes] | None,
          previous_lines: list[bytes] | None) -> Iterator[Entry]:
    root = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    old_root = None if previous is None else os.open(previous, os.O_RDONLY | os.O_DIRECTORY)
    stack: list[tuple[bytes, int | None, int | None]] = [(b"", root, old_root)]
    try:
        while stack:
            prefix, fd, old_fd = stack.pop()
            try:
                now, before = _scan(fd), _scan(old_fd)
                for name, (ino, is_dir) in now.items():
                    path = prefix + name
                    old = before.get(name)
                    if is_dir:
                        if old is None or not old[1]:
                            yield _record("+" if old is None else "~", fd, name, path, lines)
                        stack.append((path + b"/", _open(name, fd), _open(name, old_fd) if old and old[1] else None))
                    elif old is None or old[0] != ino:
                        yield _record("+" if old is None else "~", fd, name, path, lines)
                    if old is not None and old[1] and not is_dir:  # a directory became something else
                        stack.append((path + b"/", None, _open(name, old_fd)))
                for name in before.keys() - now.keys():
                    path = prefix + name
                    yield _record("-", old_fd, name, path, previous_lines)
                    if before[name][1]:
                        stack.append((path + b"/", None, _open(name, old_fd)))
            finally:
                for descriptor in (fd, old_fd):
                    if descriptor is not None:
                        os.close(descriptor)
    finally:
        for _, fd, old_fd in stack:
            for descriptor in (fd, old_fd):
                if descriptor is not None:
                    os.close(descriptor)


def between(tree: Path, lines: list[bytes] | None, previous: Path | None,
            previous_lines: list[bytes] | None) -> list[Entry]:
    """The change record of tree against previous (None: a first snapshot,
    everything new), sorted by path; lines are each one's manifest (read_lines)."""
    return sorted(_walk(tree, previous, lines, previous_lines), key=lambda c: c.path)
