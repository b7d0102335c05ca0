"""rsync: building its command line, reading its itemized list, statistics and exit codes."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from ..config.models import Config, HostSettings
from ..tree import relpath

# rsync older than this has receiver-side path-escape bugs (CVE-2022-29154,
# CVE-2024-12086/12087/12088); SPEC §7 says refuse to run with it.
MIN_RSYNC_VERSION = (3, 4, 0)

EXIT_CODES = {
    1: "syntax or usage error",
    2: "protocol incompatibility",
    3: "errors selecting input/output files or directories",
    5: "error starting client-server protocol",
    10: "error in socket I/O",
    11: "error in file I/O (is the backup disk full?)",
    12: "error in rsync protocol data stream",
    13: "errors with program diagnostics",
    14: "error in IPC code",
    20: "received SIGUSR1 or SIGINT",
    21: "some error returned by waitpid()",
    22: "error allocating core memory buffers",
    23: "partial transfer due to error",
    24: "some files vanished before they could be transferred",
    25: "the --max-delete limit stopped deletions",
    30: "timeout in data send/receive",
    35: "timeout waiting for daemon connection",
    255: "the SSH connection failed",
}
PARTIAL = 23
VANISHED = 24
SUCCESS_CODES = (0, VANISHED)

# One line per entry rsync handles: its 11-character itemize string, a space,
# its name, "//", and for a hard link (%L) " => " and the name it is linked to
# (for a symlink " -> " and its target). rsync escapes every byte below 0x20
# but TAB on the whole line as \#ooo (octal), and a backslash that would
# read as such an escape as \#134, so no line holds a raw CR or LF, and a
# literal of the format cannot be told from a name's bytes unless no name can
# hold it: "//" is such a separator (a name is a clean relative path; a
# directory's ends in "/", so its line ends in "///"). -8 leaves every other
# byte as it is, whatever the locale. The log file (--log-file) cannot be
# read exactly: it cuts a line at 2047 bytes and runs it into the next.
ITEM_FORMAT = "%i %n//%L"
ITEMS = ("-8", f"--out-format={ITEM_FORMAT}")
_ESCAPE = re.compile(rb"\\#([0-7]{3})")
_UPDATES = frozenset(b"<>ch.")
_TYPES = frozenset(b"fdLDS")
_DELETING = b"*deleting   "
MAX_LINE = 1 << 20  # far above any line rsync prints (a path and a symlink target, each escaped)
KEPT_LINES = 200  # of the lines that are neither items nor progress (the --stats block is the last of them)

_STATS = {
    "Number of files": "entries",
    "Number of created files": "created",
    "Number of deleted files": "deleted",
    "Number of regular files transferred": "changed_files",
    "Total file size": "bytes",
    "Total transferred file size": "transferred_bytes",
    "Total bytes received": "received_bytes",
}
_PROGRESS_LINE = re.compile(r"\s*([\d,]+)\s+(\d+)%\s+([\d.]+)([kMGT]?)B/s\s+\d+:\d\d:\d\d.*")
_UNITS = {"": 1, "k": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_STAT_LINE = re.compile(r"(?P<key>[A-Za-z ]+): (?P<value>[\d,.]+)(?: bytes)?(?P<rest>.*)")
_REG_COUNT = re.compile(r"\breg: ([\d,]+)")


def parse_version(text: str) -> tuple[int, ...] | None:
    match = re.search(r"rsync\s+version\s+v?(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(x) for x in match.groups()) if match else None


def check_rsync(binary: str = "rsync") -> str:
    """Return rsync's version string, or raise RuntimeError saying why it can't be used."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    except FileNotFoundError:
        raise RuntimeError(f"{binary} is not installed (apt-get install rsync)") from None
    version = parse_version(out)
    if version is None:
        raise RuntimeError(f"cannot tell the version of {binary} from: {out[:80]!r}")
    if version < MIN_RSYNC_VERSION:
        need = ".".join(map(str, MIN_RSYNC_VERSION))
        raise RuntimeError(
            f"rsync {'.'.join(map(str, version))} has known receiver path-escape bugs; "
            f"bkd needs rsync {need} or newer"
        )
    return ".".join(map(str, version))


class SshLog:
    """A private file the local ssh client writes its own messages to (ssh -E),
    for one run: whether ssh itself failed, and why, is read from there and
    never from the stderr rsync passes on, where the remote side can print
    anything (ssh's words included). Use it in a `with` block."""

    READ_LIMIT = 65536  # bytes read back: its newest messages

    def __init__(self):
        self._directory = tempfile.mkdtemp(prefix="bkd-ssh-")  # 0700
        self.path = os.path.join(self._directory, "log")

    def said(self) -> list[str]:
        """ssh's newest messages, one per line."""
        try:
            with open(self.path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - self.READ_LIMIT))
                data = f.read(self.READ_LIMIT)
        except FileNotFoundError:
            return []
        return [line.decode("utf-8", "surrogateescape") for line in data.splitlines() if line.strip()]

    def __enter__(self) -> SshLog:
        return self

    def __exit__(self, *exc_info) -> None:
        shutil.rmtree(self._directory, ignore_errors=True)


def ssh_log_for(settings: HostSettings) -> SshLog | None:
    """An SshLog for a host reached over SSH; None for a local source."""
    return SshLog() if settings.host.is_remote else None


def ssh_command(config: Config, log: str | None = None, *, identity: str | None = None) -> list[str]:
    """ssh as bkd runs it, logging in with identity (default: [ssh] identity_file,
    the backup key); with log, ssh's own messages go to that file (see SshLog).
    With a key given, ssh offers only that one (and those the ssh_config
    names), never the agent's or ~/.ssh's: the key that works is the one
    configured."""
    ssh = config.ssh
    argv = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"]
    if log:
        argv += ["-E", log]
    if ssh.config_file:
        argv += ["-F", ssh.config_file]
    key = ssh.identity_file if identity is None else identity
    if key:
        argv += ["-i", key, "-o", "IdentitiesOnly=yes"]
    if ssh.known_hosts_file:
        argv += ["-o", f"UserKnownHostsFile={ssh.known_hosts_file}"]
    for option in ssh.options:
        argv += ["-o", option]
    return argv


def _remote_shell(config: Config, settings: HostSettings, shared: str | None = None,
                  ssh_log: SshLog | None = None) -> list[str]:
    # rsync splits -e itself and honours shell-style quoting.
    if not settings.host.is_remote:
        return []
    return ["-e", shlex.join(ssh_command(config, ssh_log and ssh_log.path)
                             + (share_connection(shared) if shared else [])),
            *rsync_path_option(settings.host.rsync_path)]


def rsync_path_option(rsync_path: str) -> list[str]:
    """The command that starts rsync on the host (host.rsync_path, e.g. "sudo -n
    rsync"); [] for plain rsync. Every rsync against a host takes it from here."""
    return [f"--rsync-path={rsync_path}"] if rsync_path else []


def share_connection(control_path: str) -> list[str]:
    """ssh options to use the connection a master (ssh_master_command) holds
    open at control_path; ssh connects on its own when there is none."""
    return ["-o", f"ControlPath={control_path}", "-o", "ControlMaster=no"]


def ssh_master_command(config: Config, settings: HostSettings, control_path: str,
                       ssh_log: SshLog | None = None) -> list[str]:
    """An ssh connection to the source host that runs nothing and lets the
    runs of one snapshot share it (one key exchange instead of one per run)."""
    return [*ssh_command(config, ssh_log and ssh_log.path), "-M", "-N", "-o", f"ControlPath={control_path}",
            "-o", "ControlPersist=no", "--", settings.host.remote.destination]


def source_of(settings: HostSettings) -> str:
    """The source with exactly one trailing slash: its contents, not itself."""
    remote, path = settings.host.remote, settings.host.path.rstrip("/") + "/"
    return remote.at(path) if remote else path


def reachability_command(config: Config, settings: HostSettings, ssh_log: SshLog | None = None) -> list[str]:
    """List the top of the source: proves SSH, the remote rsync and read access,
    and writes nothing anywhere. The local rsync also prints the protocol the
    remote one speaks (remote_protocol; a restricted key lets nothing else run)."""
    timeout = int(settings.rsync.timeout.total_seconds())
    return ["rsync", "--list-only", "--debug=proto", f"--timeout={timeout}",
            *_remote_shell(config, settings, ssh_log=ssh_log), "--", source_of(settings)]


def list_command(config: Config, settings: HostSettings, source: str, filters: tuple[str, ...] = (),
                 ssh_log: SshLog | None = None, shared: str | None = None) -> list[str]:
    """List source on the host (recursively, as far as the filter rules let
    it), reading no file data and writing nothing anywhere (parse_listing
    reads its lines)."""
    timeout = int(settings.rsync.timeout.total_seconds())
    return ["rsync", "--list-only", "--recursive", f"--timeout={timeout}", *filters,
            *_remote_shell(config, settings, shared, ssh_log), "--", source]


def fetch_file_command(config: Config, settings: HostSettings, source: str, dest: Path, max_size: int,
                       ssh_log: SshLog | None = None, basis: Path | None = None,
                       shared: str | None = None) -> list[str]:
    """Copy one regular file from the host to dest (a file of its own name
    there); a file larger than max_size bytes, a directory or a symlink is
    skipped, leaving nothing at dest. basis: a directory holding an older
    copy of the file under the same name, so that only what changed moves."""
    rsync = settings.rsync
    argv = ["rsync", "--times", f"--max-size={max_size}", f"--timeout={int(rsync.timeout.total_seconds())}"]
    if rsync.bwlimit:
        argv.append(f"--bwlimit={rsync.bwlimit}")
    if basis is not None:
        argv.append(f"--copy-dest={basis}")
    return argv + [*_remote_shell(config, settings, shared, ssh_log), "--", source, str(dest)]


# A line of --list-only: type and permissions, size, date, time, then the name (escaped as \#ooo where
# it holds control bytes); the name is checked by whoever wants it, being whatever the sender said.
_LISTED = re.compile(r"(?P<type>[-dlcbps])[rwxsStT-]{9}\S*\s+[\d,]+ \d{4}/\d\d/\d\d \d\d:\d\d:\d\d (?P<name>.+)")


def parse_listing(line: str) -> tuple[str, str] | None:
    """One line of list_command's output as (type, name): type is rsync's
    first letter of the mode ('d' for a directory, '-' for a file); None
    for anything else."""
    match = _LISTED.fullmatch(line)
    return (match["type"], match["name"]) if match else None


# rsync 3.4.0 raised its protocol to 32 "to make it easier for administrators to
# check their servers have been updated": what a host's rsync speaks tells whether
# it is at least MIN_RSYNC_VERSION, through a key that may run nothing but rsync.
MIN_PROTOCOL = 32
_PROTOCOL_LINE = re.compile(r"\(Client\) Protocol versions: remote=(\d{1,4}), negotiated=\d{1,4}")


def remote_protocol(stdout_lines: list[str]) -> int | None:
    """The protocol the remote rsync announced, from the local client's
    --debug=proto line: the first line it prints, before the connection carries
    anything the remote side writes."""
    match = _PROTOCOL_LINE.fullmatch(stdout_lines[0]) if stdout_lines else None
    return int(match[1]) if match else None


# What every copy of a tree preserves (snapshots, restores, a linked copy); and what a whole-tree
# snapshot removes. --sparse: holes stay holes (a sparse lastlog would otherwise fill the disk).
PRESERVE = ["--archive", "--hard-links", "--acls", "--xattrs", "--numeric-ids", "--sparse"]
_MIRROR = ["--delete", "--delete-excluded"]


def snapshot_command(config: Config, settings: HostSettings, dest: Path, link_dests: list[Path], *,
                     dry_run: bool = False, progress: bool = True, mirror: bool = True,
                     extra: tuple[str, ...] = (), shared: str | None = None,
                     ssh_log: SshLog | None = None) -> list[str]:
    """rsync SOURCE/ DEST/: the source's contents become the snapshot's root."""
    rsync = settings.rsync
    argv = ["rsync", *PRESERVE, *(_MIRROR if mirror else []), "--stats",
            f"--timeout={int(rsync.timeout.total_seconds())}"]
    if progress:
        argv.append("--info=progress2")
    if dry_run:
        argv.append("--dry-run")
    if rsync.bwlimit:
        argv.append(f"--bwlimit={rsync.bwlimit}")
    argv += list(extra)
    argv += [f"--link-dest={path}" for path in link_dests]
    argv += [f"--exclude={pattern}" for pattern in settings.excludes]
    argv += _remote_shell(config, settings, shared, ssh_log)
    argv += ["--", source_of(settings), f"{dest}/"]
    return argv


def compare_command(config: Config, settings: HostSettings, previous: Path, shared: str | None = None,
                    ssh_log: SshLog | None = None) -> list[str]:
    """A dry run of the source against the previous snapshot: what a snapshot
    changes, touching nothing and reading no file data. Its stdout is the
    itemized list (no progress is interleaved), one line per change."""
    return snapshot_command(config, settings, previous, [], dry_run=True, progress=False, extra=ITEMS,
                            shared=shared, ssh_log=ssh_log)


def fetch_command(config: Config, settings: HostSettings, dest: Path, previous: Path, files_from: Path,
                  shared: str | None = None, ssh_log: SshLog | None = None) -> list[str]:
    """Copy only the listed entries (NUL-separated, relative, none of them a
    non-directory present in dest, except private copies made for it) from the
    source, linking or copying unchanged data from the previous snapshot.
    Without --delete or recursion it touches nothing else in dest; for an
    entry missing in dest, --link-dest only links an identical file or writes
    a new one, never changes the old. -ii itemizes every listed entry that
    exists, changed or not: its type as the source has it now."""
    return snapshot_command(config, settings, dest, [previous], mirror=False,
                            extra=(f"--files-from={files_from}", "--from0", "--ignore-missing-args", "-ii", *ITEMS),
                            shared=shared, ssh_log=ssh_log)


def refetch_command(config: Config, settings: HostSettings, dest: Path, files_from: Path,
                    shared: str | None = None, ssh_log: SshLog | None = None) -> list[str]:
    """Fetch the listed files again in full (NUL-separated, relative, none of
    them present in dest): without --link-dest nothing is linked to, or
    copied from, the damaged copy an older snapshot holds at that path."""
    return snapshot_command(config, settings, dest, [], mirror=False, progress=False,
                            extra=(f"--files-from={files_from}", "--from0", "--ignore-missing-args"), shared=shared,
                            ssh_log=ssh_log)


def root_command(config: Config, settings: HostSettings, dest: Path, shared: str | None = None,
                 ssh_log: SshLog | None = None) -> list[str]:
    """The source's top directory itself (owner, mode, times, xattrs, ACLs) onto
    dest's, and nothing in it: a --files-from list cannot name it, since
    rsync copies the contents of a listed "."."""
    return snapshot_command(config, settings, dest, [], mirror=False, progress=False, extra=("--exclude=*",),
                            shared=shared, ssh_log=ssh_log)


_REGULAR_COUNTS = {"entries": "files", "created": "created_files", "deleted": "deleted_files"}


def unescape(text: bytes) -> bytes:
    """What rsync wrote as \\#ooo (octal) back to the byte it stands for."""
    return _ESCAPE.sub(lambda m: bytes([int(m[1], 8)]), text) if b"\\#" in text else text


class Item(NamedTuple):
    """One itemized entry. update: '>' received, 'c' created locally, 'h' hard
    link, '.' attributes only, '*' deleted; type: f d L D S ('' when deleted)."""

    update: str
    type: str
    flags: str
    name: bytes  # relative, raw, without a directory's trailing slash
    linked_to: bytes | None = None  # a hard link's other name (from %L)

    @property
    def wrote_file(self) -> bool:
        """A regular file whose path now names a new inode (sent, copied or linked)."""
        return self.update in "<>ch" and self.type == "f"

    @property
    def is_new(self) -> bool:
        return self.flags == "+" * 9

    @property
    def in_place(self) -> bool:
        """rsync changes this existing non-directory entry's attributes where it
        is: in a tree linked to another, on the inode both share."""
        return (self.update in ".h" and self.type not in ("d", "")
                and not self.is_new and bool(self.flags.strip(". ")))


def _inside(name: bytes) -> bool:
    # relpath.inside, with its split only for the few names that hold "..".
    return bool(name) and name[0] != 0x2F and (b".." not in name or relpath.inside(name))


def parse_item(line: bytes) -> Item | None:
    """One line of ITEM_FORMAT, exactly; None if it is not one. A name must
    stay inside the tree: rsync prints the sender's messages too, and a
    hostile host's must not make bkd touch anything outside its snapshot."""
    if len(line) < 15 or line[11] != 0x20:
        return None
    end = line.find(b"//", 12)
    if end < 0:
        return None
    name = unescape(line[12:end])
    if not _inside(name):
        return None
    if line[0] == 0x2A:  # "*deleting   NAME//"
        return Item("*", "", "", name) if line.startswith(_DELETING) else None
    if line[0] not in _UPDATES or line[1] not in _TYPES:
        return None
    linked = None
    if line.startswith(b" => ", end + 2):
        linked = unescape(line[end + 6:])
        if not _inside(linked):
            return None
    code = line[:11].decode("latin-1")
    return Item(code[0], code[1], code[2:], name, linked)


class Output:
    """rsync's stdout, read in chunks as they come (exec.run's on_stdout_bytes):
    each item line goes to on_item; of the --info=progress2 lines (each
    starts with a CR, which no escaped item holds) only the newest is parsed,
    at most every `every` seconds and once at the end; the other lines (the
    --stats block, messages) are kept, the last KEPT_LINES of them. Splitting
    a chunk costs one pass in C; a line costs a few byte comparisons."""

    def __init__(self, on_item: Callable[[Item], None] | None = None,
                 on_progress: Callable[[dict], None] | None = None, every: float = 0.2):
        self.on_item = on_item
        self.on_progress = on_progress
        self.every = every
        self.lines: deque[str] = deque(maxlen=KEPT_LINES)
        self.dropped = 0  # lines longer than MAX_LINE: not rsync's
        self.cpu_s = 0.0  # spent reading, on the calling thread
        self._pending = b""
        self._skipping = False  # inside a line being dropped
        self._progress: bytes | None = None  # the newest progress line, not yet reported
        self._reported = float("-inf")

    def feed(self, chunk: bytes) -> None:
        started = time.thread_time()
        lines = chunk.split(b"\n")
        lines[0] = self._pending + lines[0]
        self._pending = lines.pop()
        if self._skipping:  # inside a line being dropped, up to its end
            if lines:
                lines.pop(0)
                self._skipping = False
            else:
                self._pending = b""
        if b"\r" in self._pending:
            # The progress of one large file: CR after CR, no LF until it is
            # done. Each segment followed by another CR is complete.
            done, _, unfinished = self._pending.rpartition(b"\r")
            if self.on_progress and (newest := done.rpartition(b"\r")[2]):
                self._progress = newest
            self._pending = b"\r" + unfinished
        if len(self._pending) > MAX_LINE:
            self._pending, self._skipping = b"", True
            self.dropped += 1
        for line in lines:
            self._line(line)
        if self._progress is not None and time.monotonic() - self._reported >= self.every:
            self._report()
        self.cpu_s += time.thread_time() - started

    def close(self) -> None:
        """The stream has ended: its last line, and the last progress."""
        if self._pending and not self._skipping:
            self._line(self._pending)
        self._pending = b""
        if self._progress is not None:
            self._report()

    def _line(self, line: bytes) -> None:
        if b"\r" in line:
            *progress, line = line.split(b"\r")
            if self.on_progress:
                self._progress = next((p for p in reversed(progress) if p), self._progress)
            if line[11:12] != b" " or (item := parse_item(line)) is None:
                if line and self.on_progress:
                    self._progress = line
                return
        elif line[11:12] != b" " or (item := parse_item(line)) is None:
            if line:
                self.lines.append(line.decode("utf-8", "surrogateescape"))
            return
        if self.on_item:
            self.on_item(item)

    def _report(self) -> None:
        parsed = parse_progress(self._progress.decode("ascii", "replace"))
        self._progress, self._reported = None, time.monotonic()
        if parsed and self.on_progress:
            self.on_progress(parsed)


def items_match_stats(items: list[Item], stats: dict) -> bool:
    """Whether the itemized list accounts for what rsync's --stats counted:
    every regular file transferred, every entry created and deleted."""
    transferred = sum(1 for item in items if item.update in "<>" and item.type == "f")
    created = sum(1 for item in items if item.is_new)
    deleted = sum(1 for item in items if item.update == "*")
    return (transferred, created, deleted) == (stats.get("changed_files"), stats.get("created"), stats.get("deleted"))


def split_output(lines: list[str]) -> tuple[list[str], list[str]]:
    """--out-format lines, and the --stats block that follows them."""
    for index, line in enumerate(lines):
        if line.startswith("Number of files: "):
            return [item for item in lines[:index] if item], lines[index:]
    return [item for item in lines if item], []


def parse_stats(lines: list[str]) -> dict:
    """The numbers of rsync --stats. `files` counts regular files only."""
    stats: dict = {}
    for line in lines:
        match = _STAT_LINE.fullmatch(line.strip())
        if not match or match["key"] not in _STATS:
            continue
        key = _STATS[match["key"]]
        stats[key] = int(match["value"].replace(",", "").split(".")[0])
        if key in _REGULAR_COUNTS:
            reg = _REG_COUNT.search(match["rest"])
            stats[_REGULAR_COUNTS[key]] = int(reg[1].replace(",", "")) if reg else 0
    return stats


def parse_progress(line: str) -> dict | None:
    """One --info=progress2 line as {percent, bytes, rate, eta_s}; None if it is not one."""
    match = _PROGRESS_LINE.fullmatch(line)
    if not match:
        return None
    done = int(match[1].replace(",", ""))
    percent = int(match[2])
    rate = float(match[3]) * _UNITS[match[4]]
    eta = None
    if 0 < percent < 100 and rate > 0:
        eta = round(done * (100 / percent - 1) / rate)
    elif percent == 100:
        eta = 0
    return {"percent": percent, "bytes": done, "rate": round(rate), "eta_s": eta}


# ssh's own words for a link that never came up, and for a login refused.
_SSH_FAILURE = re.compile(r"^ssh: |Connection (refused|timed out|closed by)|No route to host|"
                          r"Could not resolve hostname|Host key verification failed|"
                          r"Permission denied \((publickey|password|keyboard-interactive|gssapi)|"
                          r"REMOTE HOST IDENTIFICATION HAS CHANGED")


def ssh_failed(returncode: int, ssh_said: list[str] | None) -> bool:
    """rsync's exit code alone does not tell (it may be 255, 12 or 5): ssh's own
    messages (SshLog) do — never the stderr rsync passes on, where the host
    writes (and a remote command may exit 255 too). Without ssh's log (None),
    the exit code 255 is all there is to go by."""
    if ssh_said is None:
        return returncode == 255
    return any(_SSH_FAILURE.search(line) for line in ssh_said)


DISK_FULL = "the backup disk is full"
UNEXPLAINED = "unexplained error"  # rsync's name for 255 when ssh itself did not fail
# Every meaning describe_failure gives an exit code (outcomes.py rebuilds errors from them).
MEANINGS = frozenset({*EXIT_CODES.values(), DISK_FULL, UNEXPLAINED, "unknown error"})


def describe_failure(returncode: int, stderr_tail: list[str], ssh_said: list[str] | None = None) -> str:
    """One line for admins: the exit code's meaning, then the newest of ssh's
    own messages (SshLog.said, when there is one) and of rsync's stderr (each
    line already bounded by bkd.exec)."""
    meaning = EXIT_CODES.get(returncode, "unknown error")
    boilerplate = ("rsync error:", "rsync: connection unexpectedly closed")
    detail = [line.strip() for line in stderr_tail
              if line.strip() and not line.strip().startswith(boilerplate)]
    # For these rsync's exit code depends on which of its processes notices first.
    if any("No space left on device" in line for line in detail):
        meaning = DISK_FULL
    elif returncode and ssh_failed(returncode, ssh_said):
        meaning = EXIT_CODES[255]
    elif returncode == 255:
        meaning = UNEXPLAINED
    message = f"rsync exited with code {returncode} ({meaning})"
    said = [line.strip() if line.startswith("ssh: ") else f"ssh: {line.strip()}" for line in (ssh_said or [])[-3:]]
    shown = said + detail[-3:]
    return f"{message}: {'; '.join(shown)}" if shown else message
