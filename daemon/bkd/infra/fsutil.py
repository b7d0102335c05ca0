"""Write-then-rename helpers (anything that must appear whole goes through
here), creating directories without following planted symlinks, and copies
that keep a sparse file's holes."""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import stat
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def syncfs(path: Path) -> None:
    """Flush the whole filesystem holding path: one call instead of an fsync per
    file of a freshly written snapshot tree."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o600, sync: bool = True) -> None:
    """Write-then-rename. sync=False leaves the flushing to a syncfs() the
    caller is about to do anyway (one flush instead of one per file)."""
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(fd, mode)  # the mode asked for, whatever the umask (the unit's is 0077)
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync:
        fsync_dir(path.parent)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_file(partial: Path, final: Path) -> None:
    """A file written under a staging name, made durable (fsync) and renamed
    into place, its directory fsynced: it appears whole or not at all."""
    fsync_file(partial)
    os.replace(partial, final)
    fsync_dir(final.parent)


def replace_symlink(link: Path, target: str) -> None:
    """Point link at target atomically: readers see the old or the new target, never none."""
    tmp = link.with_name(f".{link.name}.tmp-{secrets.token_hex(4)}")
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(link.parent)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def open_private_dir(path: Path, under: Path | None = None, mode: int = 0o700) -> int:
    """Open directory `path` (an O_DIRECTORY descriptor), creating what is
    missing with `mode`. Every component below `under` is created and opened
    relative to its parent's descriptor with O_NOFOLLOW, so a symlink planted
    there (h1 -> /root-owned-dir) is refused with ELOOP instead of followed.
    `under` itself, and without it the part of `path` that exists already, is
    the admin's configured path and may contain symlinks."""
    path = Path(path)
    if under is None:
        under = path
        while not under.exists() and under != under.parent:
            under = under.parent
    parts = path.relative_to(under).parts
    if ".." in parts:
        raise ValueError(f"{path} is not a plain path below {under}")
    fd = os.open(under, _DIR_FLAGS)
    current = under
    try:
        for part in parts:
            current = current / part
            try:
                os.mkdir(part, mode, dir_fd=fd)
            except FileExistsError:
                pass
            try:
                child = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as e:
                # O_DIRECTORY wins over O_NOFOLLOW: a symlink gives ENOTDIR, not ELOOP.
                if e.errno in (errno.ELOOP, errno.ENOTDIR) and \
                        stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode):
                    raise OSError(errno.ELOOP, "is a symlink", str(current)) from None
                raise OSError(e.errno, e.strerror, str(current)) from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_private_dir(path: Path, under: Path | None = None) -> None:
    """Create path (and parents) as 0700 if missing; an existing directory is
    left as it is. Pass `under` (the backup root) for anything inside bkd's
    own directories: see open_private_dir."""
    os.close(open_private_dir(path, under))


def _data(fd: int, size: int):
    """The (start, end) ranges of fd's file that hold data; the rest are holes."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # nothing but a hole up to the end
                return
            raise
        offset = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, offset


def copy_sparse(source: int, target: int) -> None:
    """Copy the file open as source into the empty one open as target,
    writing only its data: its holes stay holes."""
    size = os.fstat(source).st_size
    for start, end in _data(source, size):
        while start < end:
            start += _copy_range(source, target, start, end)
    os.ftruncate(target, size)


def _copy_range(source: int, target: int, start: int, end: int) -> int:
    try:
        copied = os.copy_file_range(source, target, end - start, start, start)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        copied = os.pwrite(target, os.pread(source, min(end - start, 1 << 20), start), start)
    if not copied:
        raise OSError(errno.EIO, "the file shrank while it was copied")
    return copied


_PUNCH_HOLE = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_ZEROS = memoryview(bytes(1 << 20))


def punch_holes_like(basis: int, fd: int) -> None:
    """Make a hole in fd wherever the file open as basis has one and fd reads
    as zeros there (fd being a full copy of basis)."""
    size = os.fstat(basis).st_size
    holes, offset = [], 0
    for start, end in _data(basis, size):
        holes.append((offset, start))
        offset = end
    holes.append((offset, size))
    for start, end in holes:
        while start < end:
            length = min(end - start, len(_ZEROS))
            if _ZEROS[:length] == os.pread(fd, length, start) and _libc.fallocate(fd, _PUNCH_HOLE, start, length):
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
            start += length
