"""Hardlinked copies of a whole tree (the incremental snapshot's start, the
monthly golden copy)."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import structlog

from ..infra import exec as bkexec
from . import rsync

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
    linked = await bkexec.run(["rsync", *rsync.PRESERVE, f"--link-dest={source}", "--", f"{source}/", f"{dest}/"])
    if linked.returncode == 0:
        return None
    await asyncio.to_thread(shutil.rmtree, dest, True)
    return linked.stderr.strip()[-300:] or cp.stderr.strip()[-300:]

