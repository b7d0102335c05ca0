"""Write-then-rename helpers: anything that must appear whole goes through here."""

from __future__ import annotations

import ctypes
import os
import secrets
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


def make_private_dir(path: Path) -> None:
    """Create path (and parents) as 0700 if missing; an existing directory is left as it is."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
