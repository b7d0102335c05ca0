"""Restoring PATH of a snapshot to DEST/PATH (SPEC §5, §7).

A local DEST is written by the caller: bkctl runs the receiving rsync as the
caller, in the caller's own mount namespace, and the daemon feeds it over the
control socket from a sending rsync it starts in the snapshot. The daemon
builds that sender's command line itself (nothing a client sends becomes an
argument): it asks its own rsync what the server half of the receiver's
command line is. A remote DEST (host:path) is written by the daemon's rsync
over SSH with the daemon's identity.

Either way only DEST/PATH and the directories the restore must create are
written: the source is split with rsync's `/./` marker at the deepest
directory that already exists under DEST, so no existing directory takes
the snapshot's owner, mode or times, and the mtime that creating an entry
changes in that directory is put back afterwards. Symlinks stored in the
snapshot are copied as symlinks, never followed, and never restored
through: a symlink or a file where a directory of PATH should be under DEST
is a conflict."""

from __future__ import annotations

import asyncio
import os
import shlex
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from .. import exec as bkexec
from ..config.models import Config
from ..config.remote import Remote
from ..errors import Conflict, InvalidArgument
from . import rsync

log = structlog.get_logger()

MAX_TOP_LEVEL = 10_000  # entries of a snapshot's root restored into an existing DEST by name

# What the receiving rsync runs with, locally (bkctl) or here for a remote DEST.
RECEIVE = ["--archive", "--hard-links", "--acls", "--xattrs", "--numeric-ids", "--sparse", "--relative",
           "--mkpath", "--out-format=%i %n", "--stats"]


class RestoreFailed(Exception):
    pass


def check_destination(dest: str) -> Remote | None:
    """Where a host:/path DEST is over SSH; None for an absolute local path; else invalid."""
    if dest.startswith("/"):
        return None
    try:
        return Remote.parse(dest)
    except ValueError as e:
        raise InvalidArgument(f"invalid params: dest: {dest!r} is not an absolute local path, nor {e}") from None


@dataclass(frozen=True)
class Where:
    """What exists under DEST along PATH, as the writer sees it."""

    kinds: tuple[str, ...]  # for DEST, DEST/c1, DEST/c1/c2, … DEST/PATH: D dir, F other, L symlink, N none
    dest_empty: bool = True
    mtimes: tuple[str | None, ...] = ()  # of each existing directory (remote: to put back)

    def existing(self) -> int:
        """Leading components of PATH that exist under DEST as directories
        (all of them when DEST/PATH itself exists, whatever it is)."""
        components = len(self.kinds) - 1
        count = 0
        while count < components and self.kinds[count + 1] == "D":
            count += 1
        if count == components - 1 and self.kinds[-1] != "N":
            return components
        return count


def conflict(where: Where, dest: str, parts: list[bytes], overwrite: bool) -> None:
    """Raise Conflict for what a restore must not write through or over."""
    def at(index: int) -> str:
        return os.fsdecode(os.path.join(os.fsencode(dest), *parts[:index])) if index else dest

    for index, kind in enumerate(where.kinds):
        last = index == len(where.kinds) - 1
        if kind == "L" and not (last and index and overwrite):
            raise Conflict(f"{at(index)} is a symlink; a restore never writes through one", {"path": at(index)})
        if kind == "F" and not last:
            raise Conflict(f"{at(index)} exists and is not a directory", {"path": at(index)})
        if kind == "N":
            break
    exists = where.kinds[-1] != "N"
    if not overwrite and exists and (parts or not where.dest_empty):
        raise Conflict(f"{at(len(parts))} exists; use --overwrite to replace it", {"path": at(len(parts))})


def sources(parts: list[bytes], where: Where, top_level: list[bytes]) -> tuple[list[bytes], bytes]:
    """The source arguments (relative to the snapshot's root) and the directory
    under DEST they are received into. Without a leading './' rsync never
    sends the root's own attributes; '/./' ends what existing directories
    keep of the path."""
    if not parts:
        if where.kinds[0] == "N":
            return [b"./"], b""  # DEST is created: it takes the snapshot root's attributes
        if len(top_level) > MAX_TOP_LEVEL:
            raise InvalidArgument(f"invalid params: path: the snapshot's root holds {len(top_level)} entries; "
                                  "restore it into a DEST that does not exist yet, or directory by directory")
        return top_level, b""
    keep = min(where.existing(), len(parts) - 1)
    into = b"/".join(parts[:keep])
    rest = b"/".join(parts[keep:])
    return [into + b"/./" + rest if keep else rest], into


def receiver_options(overwrite: bool, dry_run: bool) -> list[str]:
    return [*RECEIVE, *([] if overwrite else ["--ignore-existing"]), *(["--dry-run"] if dry_run else [])]


_PLACEHOLDER = "bkd-sources"


async def sender_argv(options: list[str], root: Path, source_args: list[bytes]) -> list[str]:
    """The server half of `rsync OPTIONS bkd:SOURCES DEST`, from this machine's
    own rsync (the receiver runs the same one): it is told to use a remote
    shell that only writes down the command it was asked to run. Only the
    options are taken from it: rsync escapes file names for a remote shell
    (a backslash before a space, `./` before a leading dash, which with
    --relative also sends the root's own attributes), and no shell runs here.
    The sources are put in as they are, absolute, each with the `/./` marker
    where its relative part starts, so that none can be read as an option."""
    with tempfile.NamedTemporaryFile(prefix="bkd-rsh-") as captured:
        rsh = f"sh -c 'printf \"%s\\0\" \"$@\" > {shlex.quote(captured.name)}; exit 1' bkd-capture"
        await bkexec.run(["rsync", *options, "-e", rsh, "--", f"bkd:{_PLACEHOLDER}", "/nonexistent/"])
        argv = [os.fsdecode(a) for a in Path(captured.name).read_bytes().split(b"\0")[:-1]]
    if argv[1:4] != ["rsync", "--server", "--sender"] or argv[-2:] != [".", _PLACEHOLDER]:
        raise RestoreFailed(f"unexpected rsync server command: {argv[:4]}")
    return [*argv[1:-1], *(os.fsdecode(_anchored(root, arg)) for arg in source_args)]


def _anchored(root: Path, arg: bytes) -> bytes:
    """arg (relative to the snapshot's root) as an absolute path with the
    /./ marker: what follows it is the path the receiver gets."""
    if arg == b"./":
        return arg  # the root itself, the sender's working directory (a DEST created takes its attributes)
    return os.fsencode(root) + (b"/" if b"/./" in arg else b"/./") + arg


def _stats(lines: list[str], dry_run: bool) -> tuple[dict, list[str]]:
    written, stats_lines = rsync.split_output(lines)
    stats = rsync.parse_stats(stats_lines)
    stats["entries_written" if not dry_run else "entries_to_write"] = len(written)
    return stats, [line.split(" ", 1)[-1] for line in written]


# ---- remote DEST ----------------------------------------------------------------------

_PROBE = r'''for p; do
  if [ -L "$p" ]; then echo L; elif [ -d "$p" ]; then echo "D $(stat -c %.9Y -- "$p")"; elif [ -e "$p" ]; then echo F
  else echo N; break; fi
done
if [ -d "$1" ] && [ -z "$(ls -A -- "$1")" ]; then echo empty; else echo full; fi'''


def _ssh(config: Config, host: str, *command: str) -> list[str]:
    # ssh hands its arguments to the remote shell as one string: quote them for it.
    return [*rsync.ssh_command(config), host, "--", shlex.join(command)]


async def remote_where(config: Config, dest: str, parts: list[bytes]) -> Where:
    remote = Remote.parse(dest)
    paths = [os.fsdecode(os.path.join(os.fsencode(remote.path), *parts[:i])) for i in range(len(parts) + 1)]
    lines: list[str] = []
    result = await bkexec.run(_ssh(config, remote.destination, "sh", "-c", _PROBE, "bkd-probe", *paths),
                              on_stdout=lines.append)
    if result.returncode != 0 or len(lines) < 2:
        raise RestoreFailed(f"cannot look at {dest}: "
                            + rsync.describe_failure(result.returncode, result.stderr_tail).split(": ", 1)[-1])
    *found, emptiness = lines
    found += ["N"] * (len(paths) - len(found))
    return Where(tuple(line[0] for line in found), emptiness == "empty",
                 tuple(line[2:] if line.startswith("D ") else None for line in found))


async def restore_remote(config: Config, root: Path, dest: str, source_args: list[bytes], into: bytes,
                         where: Where, options: list[str], dry_run: bool,
                         on_progress: Callable[[dict], None]) -> tuple[dict, list[str]]:
    """The daemon's rsync sends from the snapshot's root to host:DEST/INTO/."""
    remote = Remote.parse(dest)
    target = os.fsdecode(os.path.join(os.fsencode(remote.path), into)).rstrip("/") + "/"
    lines: list[str] = []

    def on_stdout(line: str) -> None:
        progress = rsync.parse_progress(line)
        if progress is None:
            lines.append(line)
        else:
            on_progress(progress)

    argv = ["rsync", *options, "--info=progress2", "-e", shlex.join(rsync.ssh_command(config)), "--",
            *map(os.fsdecode, source_args), remote.at(target)]
    result = await bkexec.run(argv, on_stdout=on_stdout, cwd=str(root))
    if result.returncode not in rsync.SUCCESS_CODES:
        raise RestoreFailed(rsync.describe_failure(result.returncode, result.stderr_tail))
    depth = into.count(b"/") + 1 if into else 0
    mtime = where.mtimes[depth] if depth < len(where.mtimes) else None
    if mtime and not dry_run:  # creating entries in it changed its mtime: put it back
        directory = os.fsdecode(os.path.join(os.fsencode(remote.path), into))
        touched = await bkexec.run(_ssh(config, remote.destination, "touch", "-m", "-d", f"@{mtime}", "--",
                                        directory))
        if touched.returncode != 0:
            log.warning("restore.mtime_not_restored", directory=directory, error=touched.stderr[-300:])
    return _stats(lines, dry_run)


# ---- local DEST: the caller's receiver, fed from here -------------------------------------

async def send(argv: list[str], root: Path, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
               on_bytes: Callable[[int], None]) -> None:
    """Run the sender in the snapshot's root, wired to the caller's receiver."""
    result = await bkexec.relay(argv, reader, writer, cwd=str(root), on_bytes=on_bytes)
    if result.returncode not in rsync.SUCCESS_CODES:
        raise RestoreFailed(rsync.describe_failure(result.returncode, result.stderr_tail)
                            .replace("rsync exited", "the sending rsync exited", 1))
