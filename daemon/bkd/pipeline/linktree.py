"""Hardlinked copies of a whole tree (the incremental snapshot's start, the
monthly golden copy), and giving entries of such a copy inodes of their own."""

from __future__ import annotations

import asyncio
import fcntl
import os
import secrets
import shutil
import stat
from pathlib import Path

import structlog

from .. import exec as bkexec
from .manifest import open_parent

log = structlog.get_logger()


async def link_tree(source: Path, dest: Path) -> str | None:
    """Make dest a hardlinked copy of source; None when done, else why not.

    `cp -al` is the fast way; it runs from the common parent with relative
    names so that deep trees stay within PATH_MAX. If it still fails (a
    path longer than that), rsync --link-dest, which has no such limit."""
    parent = os.path.commonpath([source, dest])
    cp = await bkexec.run(["cp", "-al", "--", os.path.relpath(source, parent), os.path.relpath(dest, parent)],
                          cwd=parent)
    if cp.returncode == 0:
        return None
    await asyncio.to_thread(shutil.rmtree, dest, True)
    log.warning("linktree.cp_failed", error=cp.stderr[-300:], fallback="rsync --link-dest")
    linked = await bkexec.run(["rsync", "--archive", "--hard-links", "--acls", "--xattrs", "--numeric-ids",
                               f"--link-dest={source}", "--", f"{source}/", f"{dest}/"])
    if linked.returncode == 0:
        return None
    await asyncio.to_thread(shutil.rmtree, dest, True)
    return linked.stderr.strip()[-300:] or cp.stderr.strip()[-300:]


FICLONE = 0x40049409  # ioctl: share the data blocks (btrfs, xfs); else the bytes are copied


def unshare(root: Path, names: list[bytes]) -> int:
    """Give each entry of a linked tree an inode of its own, before rsync changes
    its attributes in place. A regular file becomes an exact copy (data, owner,
    mode, xattrs and ACLs, mtime) renamed over it, so that rsync finds what it
    expects there; any other type is removed for rsync to recreate. Returns how
    many entries were unshared."""
    count = 0
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in names:
            try:
                parent, base = open_parent(root_fd, name)
            except FileNotFoundError:
                continue
            try:
                st = os.stat(base, dir_fd=parent, follow_symlinks=False)
                if st.st_nlink < 2 or stat.S_ISDIR(st.st_mode):
                    continue
                if stat.S_ISREG(st.st_mode):
                    _copy_over(parent, base, st)
                else:
                    os.unlink(base, dir_fd=parent)
                count += 1
            except FileNotFoundError:
                continue
            finally:
                os.close(parent)
    finally:
        os.close(root_fd)
    return count


def _copy_over(dir_fd: int, name: bytes, st: os.stat_result) -> None:
    tmp = b".bkd-unshare-" + secrets.token_hex(6).encode()
    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
    try:
        dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
        try:
            try:
                fcntl.ioctl(dst, FICLONE, src)
            except OSError:
                while os.copy_file_range(src, dst, 1 << 30):
                    pass
            # Owner before mode (chown clears set-id bits); xattrs (ACLs
            # among them, and file capabilities, which chown also clears) after both.
            os.fchown(dst, st.st_uid, st.st_gid)
            os.fchmod(dst, stat.S_IMODE(st.st_mode))
            for attribute in os.listxattr(src):
                os.setxattr(dst, attribute, os.getxattr(src, attribute))
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(dst)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        raise
    finally:
        os.close(src)
