"""Restoring PATH of a snapshot to DEST/PATH, locally or on a host over SSH."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable
from pathlib import Path

from .. import exec as bkexec
from ..config.models import Config
from ..errors import InvalidArgument
from . import rsync

_REMOTE = re.compile(r"(?:[^@/:\s]+@)?[^@/:\s]+:.*")
MAX_LISTED = 10_000  # entries a dry run reports


def check_destination(dest: str) -> bool:
    """True for host:path over SSH, False for an absolute local path; else invalid."""
    if dest.startswith("/"):
        return False
    if _REMOTE.fullmatch(dest):
        return True
    raise InvalidArgument(f"invalid params: dest: use an absolute local path or host:path, not {dest!r}")


def local_conflict(dest: str, relative: bytes) -> str | None:
    """What already exists where a local restore would write, if anything."""
    target = os.path.join(os.fsencode(dest), relative) if relative else os.fsencode(dest)
    if relative and os.path.lexists(target):
        return os.fsdecode(target)
    if not relative and os.path.isdir(target) and os.listdir(target):
        return os.fsdecode(target)
    return None


def restore_command(config: Config, relative: bytes, dest: str, *, overwrite: bool, dry_run: bool) -> list[str]:
    """rsync ./REL DEST/, run from the snapshot's root (so that deep paths stay
    short): --relative recreates REL under DEST. Symlinks in the snapshot are
    copied as symlinks, never followed (-a without -L)."""
    source = os.fsdecode(os.path.join(b".", relative)) if relative else "./"
    argv = ["rsync", "--archive", "--hard-links", "--acls", "--xattrs", "--numeric-ids", "--sparse",
            "--relative", "--mkpath", "--stats", "--info=progress2", "--out-format=%n"]
    if not overwrite:
        argv.append("--ignore-existing")  # the belt to the conflict check's braces
    if dry_run:
        argv.append("--dry-run")
    if check_destination(dest):
        argv += ["-e", shlex.join(rsync.ssh_command(config))]
    return [*argv, "--", source, dest.rstrip("/") + "/"]


WOULD_WRITE = "would write:"


def listing(names: list[str]) -> str:
    """A dry run's list of entries as the run's detail: a heading, then one name a line
    (rsync escapes a newline in a name as \\#012)."""
    return "\n".join([WOULD_WRITE, *names])


async def run_restore(argv: list[str], snapshot_root: Path,
                      on_progress: Callable[[dict], None] | None) -> tuple[dict, list[str] | None]:
    """The restore's counts, and for a dry run the entries it would write
    (file names: kept out of the counts, which every role sees)."""
    lines: list[str] = []

    def on_stdout(line: str) -> None:
        progress = rsync.parse_progress(line)
        if progress is None:
            lines.append(line)
        elif on_progress:
            on_progress(progress)

    result = await bkexec.run(argv, on_stdout=on_stdout, cwd=str(snapshot_root))
    if result.returncode not in rsync.SUCCESS_CODES:
        raise RestoreFailed(rsync.describe_failure(result.returncode, result.stderr_tail))
    written, stats_lines = rsync.split_output(lines)
    stats = rsync.parse_stats(stats_lines)
    stats["entries_written"] = len(written)
    return stats, written[:MAX_LISTED] if "--dry-run" in argv else None


class RestoreFailed(Exception):
    pass
