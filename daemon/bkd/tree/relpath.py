"""Paths that bkd reads from its own records (manifests) and must take as
names inside a snapshot. Those records live in a directory that only the
daemon can write, but a path read back is still checked before it is
opened: one planted line must not make `verify` hash /etc/shadow."""

from __future__ import annotations


def inside(path: bytes) -> bool:
    """True when path names something inside the tree it is relative to:
    not empty, not absolute, no '..' component."""
    return bool(path) and not path.startswith(b"/") and b".." not in path.split(b"/")


def check(path: bytes, where: str) -> bytes:
    """path, or ValueError naming where it was read (e.g. 'meta/X.manifest line 7')."""
    if not inside(path):
        raise ValueError(f"{where}: refusing the path {path!r}: it is empty, absolute or contains '..'")
    return path
