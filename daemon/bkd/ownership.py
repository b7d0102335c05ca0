"""The backup root, host directories and state_dir belong to the daemon
(SPEC §7): owned by its effective uid, writable by no one else. One check
serves `bkd check-config` and the daemon's start, so both say the same
one line: `cannot use backup root /x: read-only file system (is it in
ReadWritePaths=?)`."""

from __future__ import annotations

import errno
import os
import pwd
import stat
from pathlib import Path

from .fsutil import open_private_dir


class DirError(Exception):
    """A directory bkd cannot use; the message is one line naming the problem and what to do."""


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _who() -> str:
    uid = os.geteuid()
    return f"uid {uid} ({_user(uid)})"


def _read_only(path: Path | int) -> bool:
    flags = os.fstatvfs(path).f_flag if isinstance(path, int) else os.statvfs(path).f_flag
    return bool(flags & os.ST_RDONLY)


READ_ONLY = "read-only file system (is it in ReadWritePaths=?)"


def reason(error: OSError) -> str:
    """An OSError as the tail of a one-line message."""
    if error.errno == errno.EROFS:
        return READ_ONLY
    if error.errno == errno.ELOOP:
        return (f"{error.filename} is a symlink: bkd does not follow symlinks inside its "
                "directories; remove it")
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied for {_who()}"
    return (error.strerror or str(error)).lower()


def _judge(st: os.stat_result, path: Path, ref: Path | int) -> str | None:
    """What is wrong with an existing entry (ref: its path or an open fd), or None."""
    if stat.S_ISLNK(st.st_mode):
        return ("is a symlink: bkd does not follow symlinks inside its directories; "
                "remove it (bkd creates the directory itself)")
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if _read_only(ref):
        return READ_ONLY
    euid = os.geteuid()
    if st.st_uid != euid:
        return (f"owned by uid {st.st_uid} ({_user(st.st_uid)}), not by {_who()} that bkd runs as: "
                f"chown {_user(euid)} {path}, or choose another directory")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        return f"writable by group or others (mode {mode:04o}): chmod go-w {path}"
    if not os.access(path, os.W_OK | os.X_OK, effective_ids=True):
        return f"not writable by its owner (mode {mode:04o}): chmod u+rwx {path}"
    return None


def _first_non_directory(path: Path) -> Path:
    for ancestor in reversed(path.parents):
        if ancestor.exists() and not ancestor.is_dir():
            return ancestor
    return path


def _creatable(path: Path) -> str | None:
    """A missing directory: can bkd create it (and its missing parents)?"""
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{ancestor} is not a directory: choose a path outside it"
    if _read_only(ancestor):
        return f"does not exist and cannot be created: {READ_ONLY}"
    if not os.access(ancestor, os.W_OK | os.X_OK, effective_ids=True):
        return (f"does not exist, and {_who()} cannot create it in {ancestor}: "
                f"create it with owner {_user(os.geteuid())} and mode 0700")
    return None  # bkd creates it, mode 0700


def check_dir(path: Path, what: str, *, follow_symlinks: bool = True) -> str | None:
    """None when bkd, as this effective uid, can use path as its own directory
    (or create it), else one line `cannot use WHAT PATH: problem: what to do`.
    Changes nothing. follow_symlinks=False for directories inside bkd's own
    (host directories), where a symlink can only have been planted."""
    try:
        st = os.stat(path, follow_symlinks=follow_symlinks)
    except FileNotFoundError:
        problem = _creatable(path)
    except NotADirectoryError:
        problem = f"{_first_non_directory(path)} is not a directory: choose a path outside it"
    except ValueError:
        problem = "the path contains a NUL character"
    except OSError as e:
        problem = reason(e)
    else:
        problem = _judge(st, path, path)
    return f"cannot use {what} {path}: {problem}" if problem else None


def prepare_dir(path: Path, what: str, under: Path | None = None) -> None:
    """check_dir, then create what is missing (mode 0700, without following
    symlinks below `under`, see fsutil.open_private_dir) and check the
    result through the open descriptor. Raises DirError with the one line."""
    problem = check_dir(path, what, follow_symlinks=under is None)
    if problem:
        raise DirError(problem)
    try:
        fd = open_private_dir(path, under=under)
    except OSError as e:
        raise DirError(f"cannot use {what} {path}: {reason(e)}") from None
    try:
        problem = _judge(os.fstat(fd), path, fd)
    finally:
        os.close(fd)
    if problem:
        raise DirError(f"cannot use {what} {path}: {problem}")
