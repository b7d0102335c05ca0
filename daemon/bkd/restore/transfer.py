"""Restoring PATH of a snapshot to DEST/PATH (SPEC §5, §7).

The daemon's own rsync is always the sender and the rsync *client*: it
alone chooses what is sent, with which options and filter rules (the rsync
protocol carries those from the client to the server, never back), so
nothing a receiver sends can make it open anything but the sources the
daemon named. Its exit status and the statistics it prints once the
exchange is over decide the outcome and the counts; progress is the bytes
it has written, as the kernel counts them.

A local DEST is written by the caller: bkctl runs the receiving `rsync
--server` as the caller, in the caller's own mount namespace, on the two
ends of the sender's connection, which the sender's remote shell
(rsh.py) hands to the daemon and the daemon to bkctl over the
control socket; the two rsyncs then talk directly. A remote DEST
(host:path) is written by the receiver ssh starts there, with the daemon's
identity for restores.

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
import json
import os
import re
import shlex
import socket
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from ..pipeline import readiness
from ..config.models import Config
from ..config.remote import Remote
from ..infra import exec as bkexec
from ..infra.errors import Conflict, InvalidArgument
from ..pipeline import rsync

log = structlog.get_logger()

MAX_TOP_LEVEL = 10_000  # entries of a snapshot's root restored into an existing DEST by name

MAX_LISTED = 10_000  # file names a dry run reports
WATCH_EVERY = 0.5  # seconds between two looks at how much the sender has written
STATS_LINES = 64  # lines kept of the end of rsync's output: its statistics come last
MAX_PROBE_LINES = 2 * 4096 + 8  # what a remote DEST's probe may print (one line per directory, twice)
RSH = Path(__file__).with_name("rsh.py")
_ITEM = re.compile(r"[<>ch.][fdLDS].{9} ")  # an --out-format=%i %n line

# What the daemon's rsync (the sender) runs with; the receiver's options follow from them.
OPTIONS = [*rsync.PRESERVE, "--relative", "--mkpath", "--out-format=%i %n", "--stats"]


class RestoreFailed(Exception):
    def __init__(self, message: str, returncode: int | None = None):
        super().__init__(message)
        self.returncode = returncode  # the restore's rsync's, when it failed


# rsync's exit codes when the receiving side could not write (rsync.EXIT_CODES).
_NOT_WRITTEN = (3, 11, 23)


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
    # (st_dev, st_ino) of the deepest existing directory along DEST/PATH (above DEST when it does not
    # exist) and of each of its parents up to /: where the restore writes, by whatever path it is reached.
    identities: tuple[tuple[int, int], ...] = ()
    location: tuple[int, str] | None = None  # that directory's place in its filesystem (bkctl.mounts)

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


def options(overwrite: bool, dry_run: bool) -> list[str]:
    return [*OPTIONS, *([] if overwrite else ["--ignore-existing"]), *(["--dry-run"] if dry_run else [])]


class _Output:
    """What the restore's rsync prints on stdout, bounded: the itemized lines
    are counted (and for a dry run the first MAX_LISTED names kept), and the
    last lines kept, where rsync puts its statistics once the exchange is over.
    The receiver's messages reach stdout too: nothing before that is taken
    for rsync's own numbers, and the count of lines is capped by them."""

    def __init__(self, listing: bool):
        self.listing = listing
        self.items = 0
        self.names: list[str] = []
        self.tail: deque[str] = deque(maxlen=STATS_LINES)

    def line(self, line: str) -> None:
        self.tail.append(line)
        if _ITEM.match(line):
            self.items += 1
            if self.listing and len(self.names) < MAX_LISTED:
                self.names.append(line[12:])

    def statistics(self, dry_run: bool) -> dict:
        lines = list(self.tail)
        starts = [index for index, line in enumerate(lines) if line.startswith("Number of files: ")]
        if not starts:
            raise RestoreFailed("the restore's rsync ended without its statistics: the transfer did not finish")
        stats = rsync.parse_stats(lines[starts[-1]:])
        stats["entries_to_write" if dry_run else "entries_written"] = min(self.items, stats.get("entries", 0))
        return stats


def written_bytes(pid: int) -> int | None:
    """What a process has written so far (the kernel's count, /proc/PID/io), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/io", "rb") as io:
            for line in io:
                if line.startswith(b"wchar:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


async def _watch(pid: int, on_progress: Callable[[int], None]) -> None:
    while (sent := written_bytes(pid)) is not None:
        on_progress(sent)
        await asyncio.sleep(WATCH_EVERY)


async def push(argv: list[str], root: Path, dry_run: bool, on_progress: Callable[[int], None], timeout: float,
               pass_fds: Sequence[int] = (), on_spawn: Callable[[], None] | None = None) -> tuple[dict, list[str]]:
    """Run the daemon's rsync (the sender) in the snapshot's root: its statistics
    and, for a dry run, the names it lists. It fails unless rsync says it
    succeeded and printed its statistics. timeout (rsync.timeout): rsync's own
    --timeout ends a transfer whose receiver stops; exec.run's stall limit of
    the same length also stops a remote rsync frozen while ssh keeps the
    connection up, as for snapshots."""
    output = _Output(dry_run)
    watching: list[asyncio.Task] = []

    def spawned(pid: int) -> None:
        watching.append(asyncio.create_task(_watch(pid, on_progress)))
        if on_spawn:
            on_spawn()

    argv = [argv[0], f"--timeout={int(timeout)}", *argv[1:]]
    try:
        result = await bkexec.run(argv, on_stdout=output.line, cwd=str(root), pass_fds=pass_fds, on_spawn=spawned,
                                  stall=timeout)
    except bkexec.Stalled as e:
        raise RestoreFailed(f"rsync hung: {e} (rsync.timeout); its processes were stopped") from None
    finally:
        for task in watching:
            task.cancel()
    if result.returncode not in rsync.SUCCESS_CODES:
        raise RestoreFailed(rsync.describe_failure(result.returncode, result.stderr_tail), result.returncode)
    stats = output.statistics(dry_run)
    return stats, output.names[:stats.get("entries", 0)]


# ---- remote DEST ----------------------------------------------------------------------

# First a marker, "bkd-probe": the probe itself ran (a key with a forced command runs that command
# instead). For each path: L symlink, "D mtime" directory, F other, N none (and no further); then whether
# DEST is empty. Then, for the deepest existing directory (above DEST when it does not exist): its
# mount ("M maj:min root mount-point", findmnt's escapes) and physical path ("P path"), and
# "I dev ino" for it and each of its parents up to /.
PROBE_MARKER = "bkd-probe"
_PROBE = r'''echo bkd-probe
for p; do
  if [ -L "$p" ]; then echo L; elif [ -d "$p" ]; then echo "D $(stat -c %.9Y -- "$p")"; d=$p; elif [ -e "$p" ]
  then echo F; else echo N; break; fi
done
if [ -d "$1" ] && [ -z "$(ls -A -- "$1")" ]; then echo empty; else echo full; fi
if [ -z "$d" ]; then d=$1; while [ ! -d "$d" ]; do d=$(dirname -- "$d"); done; fi
cd -P -- "$d" || exit 0
findmnt -n -r -o MAJ:MIN,FSROOT,TARGET -T . | while read -r line; do echo "M $line"; done; echo "P $(pwd -P)"
while :; do stat -c 'I %d %i' .; [ "$(pwd -P)" = / ] && break; cd -P .. || break; done'''
_FINDMNT_ESCAPE = re.compile(rb"\\x([0-9a-fA-F]{2})")


def restore_key(config: Config) -> str:
    """The key a restore to host:path logs in with ([ssh] restore_identity_file):
    the backup key is meant to be read-only (a forced `rrsync -ro`), so bkd
    never writes to a host with it."""
    key = config.ssh.restore_identity_file
    if not key:
        raise InvalidArgument("invalid params: dest: a restore to host:path logs in with bkd's restore key, and "
                              "[ssh] restore_identity_file is not set (bkd's backup key is read-only): run "
                              "`bkd host add NAME TARGET --restore-key` on the server and put the line it prints "
                              "on the host, or restore to a local DEST and copy the files over")
    return key


def rsync_path_at(config: Config, remote: Remote, host: str) -> str:
    """How rsync starts on DEST's host: host.rsync_path of the restored host when
    DEST is on its host, else of another configured host there; "" for none."""
    hosts = sorted(config.host, key=lambda h: h.name != host)
    return next((h.rsync_path for h in hosts if h.remote and h.remote.host == remote.host), "")


def _ssh(config: Config, host: str, *command: str, log: str | None = None) -> list[str]:
    # ssh hands its arguments to the remote shell as one string: quote them for it.
    return [*rsync.ssh_command(config, log, identity=restore_key(config)), host, "--", shlex.join(command)]


async def remote_where(config: Config, dest: str, parts: list[bytes]) -> Where:
    """What exists at a host:path DEST along PATH, looked at over SSH with the
    restore key. A key that cannot log in or run the probe is InvalidArgument
    saying which key to use."""
    remote = Remote.parse(dest)
    paths = [os.fsdecode(os.path.join(os.fsencode(remote.path), *parts[:i])) for i in range(len(parts) + 1)]
    lines: list[str] = []

    def on_stdout(line: str) -> None:
        if len(lines) < MAX_PROBE_LINES:
            lines.append(line)

    with rsync.SshLog() as ssh_log:
        result = await bkexec.run(_ssh(config, remote.destination, "sh", "-c", _PROBE, "bkd-probe", *paths,
                                       log=ssh_log.path), on_stdout=on_stdout)
        said = ssh_log.said()
    if lines[:1] != [PROBE_MARKER]:
        raise InvalidArgument(f"invalid params: dest: cannot restore to {dest}: "
                              f"{_unusable(config, remote, result.returncode, said)}")
    found = [line for line in lines[1:] if not line.startswith(("I ", "M ", "P "))]
    if result.returncode != 0 or len(found) < 2:
        raise InvalidArgument(f"invalid params: dest: cannot look at {dest}: "
                              + rsync.describe_failure(result.returncode, result.stderr_tail, said).split(": ", 1)[-1])
    *found, emptiness = found
    found += ["N"] * (len(paths) - len(found))
    identities = []
    for line in lines:
        fields = line.split()
        if len(fields) == 3 and fields[0] == "I" and fields[1].isdigit() and fields[2].isdigit():
            identities.append((int(fields[1]), int(fields[2])))
    return Where(tuple(line[0] for line in found), emptiness == "empty",
                 tuple(line[2:] if line.startswith("D ") else None for line in found), tuple(identities),
                 _probed_location(lines))


def _unusable(config: Config, remote: Remote, returncode: int, ssh_said: list[str]) -> str:
    """Why the restore key did not run the probe, and what to do (bkd's own words)."""
    key = config.ssh.restore_identity_file
    line = ("the line `bkd host add NAME TARGET --restore-key` prints, in root's ~/.ssh/authorized_keys "
            "(or the login's, with host.rsync_path = \"sudo -n rsync\")")
    problem = readiness.login_problem(returncode, ssh_said)
    if problem == readiness.HOST_KEY:
        return (f"the host key of {remote.host} is not the one pinned in bkd's known_hosts; bkd never accepts a "
                "changed key: verify it and re-pin it (bkd host add says how)")
    if problem == readiness.REFUSED:
        return f"{remote.destination} refused bkd's restore key {key}: put {line}"
    if problem == readiness.UNREACHABLE:
        return f"cannot connect to {remote.host} (the SSH connection failed)"
    return (f"{remote.destination} ran something other than bkd's probe with bkd's restore key {key}: "
            "a forced command (such as the read-only `rrsync -ro` of bkd's backup key) restricts it. "
            f"A restore needs a key that may run commands and write: put {line}")


def _probed_location(lines: list[str]) -> tuple[int, str] | None:
    """The probed directory's place in its filesystem (as bkctl.mounts.location
    tells it locally), from findmnt's mount line and its physical path."""
    mount = [line[2:].split(" ") for line in lines if line.startswith("M ")]
    physical = [line[2:] for line in lines if line.startswith("P ")]
    if len(mount) != 1 or len(mount[0]) != 3 or len(physical) != 1:
        return None
    dev, root, point = mount[0][0], *(os.fsdecode(_FINDMNT_ESCAPE.sub(lambda m: bytes([int(m[1], 16)]),
                                                                    os.fsencode(f))) for f in mount[0][1:])
    path = physical[0]
    major, _, minor = dev.partition(":")
    if not (major.isdigit() and minor.isdigit()) or not (path == point or path.startswith(point.rstrip("/") + "/")):
        return None
    return os.makedev(int(major), int(minor)), os.path.normpath(os.path.join(root, path[len(point):].lstrip("/")))


async def restore_remote(config: Config, root: Path, dest: str, source_args: list[bytes], into: bytes,
                         where: Where, options: list[str], dry_run: bool, on_progress: Callable[[int], None],
                         timeout: float, rsync_path: str = "") -> tuple[dict, list[str]]:
    """The daemon's rsync sends from the snapshot's root to host:DEST/INTO/,
    over SSH with the restore key (rsync_path: how rsync starts there)."""
    remote = Remote.parse(dest)
    target = os.fsdecode(os.path.join(os.fsencode(remote.path), into)).rstrip("/") + "/"
    argv = ["rsync", *options, "-e", shlex.join(rsync.ssh_command(config, identity=restore_key(config))),
            *rsync.rsync_path_option(rsync_path), "--", *map(os.fsdecode, source_args), remote.at(target)]
    try:
        stats, names = await push(argv, root, dry_run, on_progress, timeout)
    except RestoreFailed as e:
        if e.returncode not in _NOT_WRITTEN:
            raise
        raise RestoreFailed(f"{e} (a restore to host:path writes as {remote.destination}, logged in with bkd's "
                            f"restore key {config.ssh.restore_identity_file}: "
                            "that login must be able to write there: root, or host.rsync_path = \"sudo -n rsync\")",
                            e.returncode) from None
    depth = into.count(b"/") + 1 if into else 0
    mtime = where.mtimes[depth] if depth < len(where.mtimes) else None
    if mtime and not dry_run:  # creating entries in it changed its mtime: put it back
        directory = os.fsdecode(os.path.join(os.fsencode(remote.path), into))
        touched = await bkexec.run(_ssh(config, remote.destination, "touch", "-m", "-d", f"@{mtime}", "--",
                                        directory))
        if touched.returncode != 0:
            log.warning("restore.mtime_not_restored", directory=directory, error=touched.stderr[-300:])
    return stats, names


# ---- local DEST: the caller's receiver, on the sender's own connection ----------------------

async def restore_local(root: Path, source_args: list[bytes], missing: bytes, options: list[str],
                        attached: Awaitable[asyncio.StreamWriter], dry_run: bool,
                        on_progress: Callable[[int], None], timeout: float) -> tuple[dict, list[str]]:
    """The daemon's rsync sends from the snapshot's root; the two ends of its
    connection go to the caller's bkctl over the connection it attaches with.
    The sender starts at once, while bkctl is still attaching."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    rsh = shlex.join([sys.executable, "-I", "-S", str(RSH), str(theirs.fileno())])
    # The receiver runs in the directory bkctl held since it looked: DEST/INTO, or the deepest
    # existing parent of a DEST that does not exist yet (`missing` is DEST from there).
    target = os.fsdecode(missing) + "/" if missing else "."
    argv = ["rsync", *options, "-e", rsh, "--", *map(os.fsdecode, source_args), f"bkd:{target}"]
    with ours, theirs:
        transfer = asyncio.ensure_future(push(argv, root, dry_run, on_progress, timeout, pass_fds=(theirs.fileno(),),
                                              on_spawn=theirs.close))  # only the remote shell may hold it
        handoff = asyncio.ensure_future(_handed_over(ours))
        attaching = asyncio.ensure_future(attached)
        try:
            await asyncio.wait({transfer, handoff}, return_when=asyncio.FIRST_COMPLETED)
            if handoff.done() and not handoff.exception():
                command, fds = handoff.result()
                try:
                    _give(await attaching, command, fds)
                finally:
                    for fd in fds:
                        os.close(fd)
            return await transfer  # an rsync that failed before its remote shell handed over says why
        except BaseException:
            transfer.cancel()
            await asyncio.gather(transfer, return_exceptions=True)  # the sender stops before the run concludes
            raise
        finally:
            handoff.cancel()
            attaching.cancel()


async def _handed_over(channel: socket.socket) -> tuple[list[str], list[int]]:
    """The receiver's command and the two ends of the sender's connection, from its remote shell."""
    loop = asyncio.get_running_loop()
    channel.setblocking(False)
    readable = loop.create_future()
    loop.add_reader(channel.fileno(), lambda: readable.done() or readable.set_result(None))
    try:
        await readable
    finally:
        loop.remove_reader(channel.fileno())
    message, fds, _flags, _address = socket.recv_fds(channel, 65536, 2)
    if not message or len(fds) != 2:
        for fd in fds:
            os.close(fd)
        raise RestoreFailed("the restore's rsync did not start its remote shell")
    return [os.fsdecode(arg) for arg in message.split(b"\0")], fds


def _give(attached: asyncio.StreamWriter, command: list[str], fds: list[int]) -> None:
    """Hand the caller's bkctl its receiver's command and the two ends of the
    sender's connection (SCM_RIGHTS), on the connection it attached with
    (restore.stream), which ends with that."""
    line = json.dumps({"receiver": command}).encode() + b"\n"
    with socket.socket(fileno=os.dup(attached.get_extra_info("socket").fileno())) as sock:
        attached.transport.abort()
        sock.settimeout(5)  # one small message into a connection that has nothing else to send
        try:
            socket.send_fds(sock, [line], fds)
        except OSError as e:
            raise RestoreFailed(f"the caller's bkctl went away before receiving: {e.strerror or e}") from None
