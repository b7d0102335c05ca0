"""Looking inside a snapshot without ever leaving it.

Snapshot content is hostile: paths are taken relative to the snapshot's root
(a leading '/' is that root), '..' is refused, and every directory on the way
is opened with O_NOFOLLOW relative to its parent, so a symlink stored in the
snapshot is never followed — not even one swapped in while we look."""

from __future__ import annotations

import os
import stat
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from ..infra import clock
from ..infra.errors import InvalidArgument, NotFound
from .layout import HostDir, SnapshotName

DEFAULT_PAGE = 1000


def components(path: str) -> list[bytes]:
    """PATH → its components as bytes (surrogate escapes undone); '..' refused."""
    parts = [p for p in os.fsencode(path or "/").split(b"/") if p not in (b"", b".")]
    if b".." in parts:
        raise InvalidArgument(f"invalid params: path: '..' is not allowed in {path!r}")
    return parts


@contextmanager
def open_dir(root: Path, parts: list[bytes]):
    """An fd for root/parts, each step a real directory inside the snapshot."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for index, part in enumerate(parts):
            try:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                raise _not_found(parts[: index + 1]) from None
            except (NotADirectoryError, OSError) as e:
                where = "/" + os.fsdecode(b"/".join(parts[: index + 1]))
                if _is_symlink(fd, part):
                    raise InvalidArgument(f"invalid params: path: {where} is a symlink stored in the snapshot; "
                                   "bkd does not follow it") from None
                raise InvalidArgument(f"invalid params: path: {where} is not a directory ({e.strerror})") from None
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _is_symlink(dir_fd: int, name: bytes) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _not_found(parts: list[bytes]) -> NotFound:
    return NotFound(f"no such path in the snapshot: /{os.fsdecode(b'/'.join(parts))}")


def describe(name: bytes, mode: int, size: int, mtime: float, target: bytes | None = None) -> dict:
    """One entry as browse shows it, from a directory or an archive's index alike."""
    kind = ("dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else
            "symlink" if stat.S_ISLNK(mode) else "other")
    entry = {"name": os.fsdecode(name), "type": kind, "size": size, "mode": stat.filemode(mode),
             "mtime": clock.iso(datetime.fromtimestamp(mtime, timezone.utc))}
    if kind == "symlink":
        entry["target"] = os.fsdecode(target or b"")
    return entry


def entry_of(name: bytes, st: os.stat_result, dir_fd: int) -> dict:
    target = os.readlink(name, dir_fd=dir_fd) if stat.S_ISLNK(st.st_mode) else None
    return describe(name, st.st_mode, st.st_size, st.st_mtime, target)


def paged(names: list, offset: int, limit: int, entries: list[dict]) -> dict:
    """A page of a directory listing: its entries, and where the next starts."""
    return {"entries": entries, "total": len(names), "offset": offset,
            "next_offset": offset + limit if offset + limit < len(names) else None}


def lookup(root: Path, path: str) -> dict:
    """The entry PATH names (not followed if it is a symlink)."""
    parts = components(path)
    if not parts:
        with open_dir(root, []) as fd:
            return {**entry_of(b"/", os.stat(fd), fd), "name": "/"}
    with open_dir(root, parts[:-1]) as fd:
        try:
            st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            raise _not_found(parts) from None
        return entry_of(parts[-1], st, fd)


def list_dir(root: Path, path: str, offset: int = 0, limit: int = DEFAULT_PAGE) -> dict:
    """One page of a directory's entries, sorted by name (as bytes)."""
    parts = components(path)
    with open_dir(root, parts) as fd:
        names = sorted(os.listdir(fd), key=os.fsencode)
        page = names[offset: offset + limit]
        entries = []
        for name in page:
            raw = os.fsencode(name)
            try:
                entries.append(entry_of(raw, os.stat(raw, dir_fd=fd, follow_symlinks=False), fd))
            except FileNotFoundError:
                continue
    return paged(names, offset, limit, entries)


def snapshot_root(host_dir: HostDir, snapshot: str | None) -> tuple[str, Path]:
    """The complete snapshot named (default: latest) and its directory."""
    if snapshot in (None, "", "latest"):
        name = host_dir.latest_snapshot()
        if name is None:
            raise NotFound(f"{host_dir.root.name} has no snapshot yet")
    else:
        name = SnapshotName.parse(snapshot)
        if name is None or not (host_dir.hourly / snapshot).is_dir():
            raise NotFound(f"{host_dir.root.name} has no snapshot {snapshot!r}")
    return str(name), host_dir.hourly / str(name)


def history(host_dir: HostDir, path: str) -> list[dict]:
    """Every snapshot in which path exists, oldest first, with what it was there."""
    components(path)  # a '..' is the caller's mistake, not an absence
    found = []
    for name in host_dir.snapshots():
        try:
            entry = lookup(host_dir.hourly / str(name), path)
        except (NotFound, InvalidArgument):
            continue  # not there, or not reachable without following a symlink
        found.append({"snapshot": str(name), "time": clock.iso(name.time), **entry})
    return found


def top_level(root: Path) -> list[bytes]:
    """The names in a snapshot's root, sorted."""
    with open_dir(root, []) as fd:
        return sorted(os.fsencode(name) for name in os.listdir(fd))
