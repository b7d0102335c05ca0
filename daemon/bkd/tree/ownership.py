"""The backup root, host directories and state_dir belong to the daemon
(SPEC §7): owned by its effective uid, writable by no one else. One check
serves `bkd check-config` and the daemon's start, so both say the same
one line: `cannot use backup root /x: read-only file system (is it in
ReadWritePaths=?)`. And one daemon at a time holds each of them (lock_dir)."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
from pathlib import Path

from ..infra.errors import StartupError
from ..infra.fsutil import open_private_dir
from ..infra.users import user_name


class DirError(Exception):
    """A directory bkd cannot use; the message is one line naming the problem and what to do."""


def who() -> str:
    """This effective uid and its name, as messages name it."""
    uid = os.geteuid()
    return f"uid {uid} ({user_name(uid)})"


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
        return f"permission denied for {who()}"
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
        return (f"owned by uid {st.st_uid} ({user_name(st.st_uid)}), not by {who()} that bkd runs as: "
                f"chown {user_name(euid)} {path}, or choose another directory")
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
        return (f"does not exist, and {who()} cannot create it in {ancestor}: "
                f"create it with owner {user_name(os.geteuid())} and mode 0700")
    return None  # bkd creates it, mode 0700


# Filesystems that hold no files of their own (kernel interfaces, device nodes):
# a directory of bkd's there is a mistake, whether or not it can be created.
PSEUDO_FILESYSTEMS = frozenset({
    "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs", "pstore",
    "bpf", "configfs", "fusectl", "mqueue", "efivarfs", "binfmt_misc", "hugetlbfs", "nsfs", "selinuxfs",
    "rpc_pipefs",
})
# Filesystems in memory: fine for a test, but what bkd keeps there is lost at reboot.
MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})


def _unescape(field: bytes) -> bytes:
    """A mountinfo field: the kernel writes space, tab, newline and backslash as \\ooo."""
    return re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), field)


def filesystem_type(path: Path) -> str | None:
    """The type of the filesystem that holds path, or would hold it (its
    nearest existing ancestor's), as /proc/self/mountinfo names it: the
    mount point nearest to the path, the last mounted of those on one point.
    None when it cannot be told."""
    try:
        where = Path(os.path.realpath(path))
        while not where.exists():
            where = where.parent
        with open("/proc/self/mountinfo", "rb") as f:
            lines = f.read().splitlines()
    except (OSError, ValueError):
        return None
    kind, depth = None, -1
    for line in lines:
        fields = line.split(b" ")
        if len(fields) < 7 or b"-" not in fields[6:]:  # not a line of the form the kernel writes
            continue
        point = Path(os.fsdecode(_unescape(fields[4])))
        if where.is_relative_to(point) and len(point.parts) >= depth:
            kind, depth = os.fsdecode(fields[fields.index(b"-", 6) + 1]), len(point.parts)
    return kind


def in_memory(path: Path, what: str) -> str | None:
    """A warning when path is on a filesystem in memory (tmpfs): one line, else None."""
    kind = filesystem_type(path)
    if kind in MEMORY_FILESYSTEMS:
        return f"{what} {path} is on {kind}, in memory: what bkd keeps there is lost at the next reboot"
    return None


def check_dir(path: Path, what: str, *, follow_symlinks: bool = True) -> str | None:
    """None when bkd, as this effective uid, can use path as its own directory
    (or create it), else one line `cannot use WHAT PATH: problem: what to do`.
    Changes nothing. follow_symlinks=False for directories inside bkd's own
    (host directories), where a symlink can only have been planted."""
    kind = filesystem_type(path) if follow_symlinks else None
    if kind in PSEUDO_FILESYSTEMS:
        return (f"cannot use {what} {path}: it is on {kind}, a pseudo filesystem that holds no files: "
                "choose a directory on a disk")
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


LOCK_NAME = ".bkd.lock"


def lock_dir(path: Path, what: str) -> int:
    """One daemon per backup root and per state_dir, held by the kernel (flock)
    for as long as the process lives; no pid file to go stale."""
    lock = path / LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise StartupError(f"cannot use {what} {path}: {(e.strerror or str(e)).lower()} ({lock})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StartupError(f"another bkd (pid {holder}) is already running on {what} {path} "
                           f"(it holds the lock on {lock})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
