"""Where a directory really is: its filesystem and its path inside that
filesystem, from /proc/self/mountinfo (standard library only; the daemon
uses it too). A bind mount shows a directory under another path; in its
filesystem it has one place, the same in every mount namespace, so two
such places compare whatever path or namespace each was reached from."""

from __future__ import annotations

import os
import re

_ESCAPE = re.compile(rb"\\([0-7]{3})")  # mountinfo writes a space as \040


def _unescape(field: bytes) -> bytes:
    return _ESCAPE.sub(lambda m: bytes([int(m[1], 8)]), field)


def location(fd: int) -> tuple[int, str] | None:
    """(device of its filesystem, path inside that filesystem) of the directory
    open as fd, or None when it cannot be told (it was removed, or lies outside
    this process's root)."""
    try:
        path = os.fsencode(os.readlink(f"/proc/self/fd/{fd}"))
        with open("/proc/self/mountinfo", "rb") as table:
            lines = table.read().splitlines()
    except OSError:
        return None
    if not path.startswith(b"/") or path.endswith(b" (deleted)"):
        return None
    best = None
    for line in lines:
        # 36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw: id, parent, dev, root, mount point
        fields = line.split(b" ")
        if len(fields) < 5 or b":" not in fields[2]:
            continue
        point = _unescape(fields[4])
        inside = path == point or path.startswith(point.rstrip(b"/") + b"/")
        if inside and (best is None or len(point) >= len(best[2])):  # the deepest; a later one is mounted on top
            best = (fields[2], _unescape(fields[3]), point)
    if best is None:
        return None
    dev, root, point = best
    major, minor = (int(n) for n in dev.split(b":"))
    below = path[len(point):].lstrip(b"/")
    return os.makedev(major, minor), os.fsdecode(os.path.normpath(os.path.join(root, below)))


def within(place: tuple[int, str], directory: tuple[int, str]) -> bool:
    """Whether place is directory or lies under it, in the same filesystem."""
    (dev, path), (own_dev, own_path) = place, directory
    return dev == own_dev and (path == own_path or path.startswith(own_path.rstrip("/") + "/"))
