"""rsync: building its command line, reading its statistics and exit codes."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..config.models import Config, HostSettings

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

# One line per changed entry: its 11-character itemize string, a space, its
# name, and for a hard link (%L) " => " and the name it is linked to. rsync
# escapes a control character in its output (\\x01 becomes \\#001) and then
# also a backslash before "#" in a name (\\#134#), so the separator is unambiguous.
ITEM_FORMAT = "%i %n"
_TARGET_SEPARATOR = "\\#001"
ITEMS_ON_STDOUT = ("--out-format=%i %n\x01%L",)
_ITEM_LINE = re.compile(r"(?P<update>[<>ch.])(?P<type>[fdLDS])(?P<flags>.{9}) (?P<name>.+)", re.DOTALL)
_DELETED_LINE = re.compile(r"\*deleting   (?P<name>.+)", re.DOTALL)
_LOG_PREFIX = re.compile(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[\d+\] ")
_ESCAPE = re.compile(rb"\\#([0-7]{3})")

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


def ssh_command(config: Config, *, identity: str | None = None) -> list[str]:
    """ssh as bkd runs it, logging in with identity (default: [ssh] identity_file,
    the backup key). With a key given, ssh offers only that one (and those the
    ssh_config names), never the agent's or ~/.ssh's: the key that works is
    the one configured."""
    ssh = config.ssh
    argv = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"]
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


def _remote_shell(config: Config, settings: HostSettings, shared: str | None = None) -> list[str]:
    # rsync splits -e itself and honours shell-style quoting.
    if not settings.host.is_remote:
        return []
    return ["-e", shlex.join(ssh_command(config) + (share_connection(shared) if shared else [])),
            *rsync_path_option(settings.host.rsync_path)]


def rsync_path_option(rsync_path: str) -> list[str]:
    """The command that starts rsync on the host (host.rsync_path, e.g. "sudo -n
    rsync"); [] for plain rsync. Every rsync against a host takes it from here."""
    return [f"--rsync-path={rsync_path}"] if rsync_path else []


def share_connection(control_path: str) -> list[str]:
    """ssh options to use the connection a master (ssh_master_command) holds
    open at control_path; ssh connects on its own when there is none."""
    return ["-o", f"ControlPath={control_path}", "-o", "ControlMaster=no"]


def ssh_master_command(config: Config, settings: HostSettings, control_path: str) -> list[str]:
    """An ssh connection to the source host that runs nothing and lets the
    runs of one snapshot share it (one key exchange instead of one per run)."""
    return [*ssh_command(config), "-M", "-N", "-o", f"ControlPath={control_path}", "-o", "ControlPersist=no",
            "--", settings.host.remote.destination]


def source_of(settings: HostSettings) -> str:
    """The source with exactly one trailing slash: its contents, not itself."""
    remote, path = settings.host.remote, settings.host.path.rstrip("/") + "/"
    return remote.at(path) if remote else path


def reachability_command(config: Config, settings: HostSettings) -> list[str]:
    """List the top of the source: proves SSH, the remote rsync and read access,
    and writes nothing anywhere. The local rsync also prints the protocol the
    remote one speaks (remote_protocol; a restricted key lets nothing else run)."""
    timeout = int(settings.rsync.timeout.total_seconds())
    return ["rsync", "--list-only", "--debug=proto", f"--timeout={timeout}", *_remote_shell(config, settings),
            "--", source_of(settings)]


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


# What every snapshot transfer preserves; and what a whole-tree one removes.
# --sparse: holes stay holes in the snapshot (a sparse lastlog would otherwise fill the disk)
_PRESERVE = ["--archive", "--hard-links", "--acls", "--xattrs", "--numeric-ids", "--sparse"]
_MIRROR = ["--delete", "--delete-excluded"]


def snapshot_command(config: Config, settings: HostSettings, dest: Path, link_dests: list[Path], *,
                     dry_run: bool = False, progress: bool = True, mirror: bool = True,
                     extra: tuple[str, ...] = (), shared: str | None = None) -> list[str]:
    """rsync SOURCE/ DEST/: the source's contents become the snapshot's root."""
    rsync = settings.rsync
    argv = ["rsync", *_PRESERVE, *(_MIRROR if mirror else []), "--stats",
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
    argv += _remote_shell(config, settings, shared)
    argv += ["--", source_of(settings), f"{dest}/"]
    return argv


def compare_command(config: Config, settings: HostSettings, previous: Path, shared: str | None = None) -> list[str]:
    """A dry run of the source against the previous snapshot: what a snapshot
    changes, touching nothing and reading no file data. Its stdout is the
    itemized list alone (no progress is interleaved), one line per change."""
    return snapshot_command(config, settings, previous, [], dry_run=True, progress=False, extra=ITEMS_ON_STDOUT,
                            shared=shared)


def fetch_command(config: Config, settings: HostSettings, dest: Path, previous: Path, files_from: Path,
                  item_log: str, shared: str | None = None) -> list[str]:
    """Copy only the listed entries (NUL-separated, relative, none of them a
    non-directory present in dest) from the source, linking or copying
    unchanged data from the previous snapshot. Without --delete or recursion
    it touches nothing else in dest; for an entry missing in dest, --link-dest
    only links an identical file or writes a new one, never changes the old."""
    return snapshot_command(config, settings, dest, [previous], mirror=False,
                            extra=(f"--files-from={files_from}", "--from0", "--ignore-missing-args",
                                   *log_items(item_log)), shared=shared)


def refetch_command(config: Config, settings: HostSettings, dest: Path, files_from: Path,
                    shared: str | None = None) -> list[str]:
    """Fetch the listed files again in full (NUL-separated, relative, none of
    them present in dest): without --link-dest nothing is linked to, or
    copied from, the damaged copy an older snapshot holds at that path."""
    return snapshot_command(config, settings, dest, [], mirror=False, progress=False,
                            extra=(f"--files-from={files_from}", "--from0", "--ignore-missing-args"), shared=shared)


def root_command(config: Config, settings: HostSettings, dest: Path, shared: str | None = None) -> list[str]:
    """The source's top directory itself (owner, mode, times, xattrs, ACLs) onto
    dest's, and nothing in it: a --files-from list cannot name it, since
    rsync copies the contents of a listed "."."""
    return snapshot_command(config, settings, dest, [], mirror=False, progress=False, extra=("--exclude=*",),
                            shared=shared)


def log_items(path: str) -> tuple[str, ...]:
    """Itemize into a log file of its own (a Channel's pipe): each entry rsync's
    local processes handle, one whole line each, apart from the progress on stdout."""
    return (f"--log-file={path}", f"--log-file-format={ITEM_FORMAT}")


_REGULAR_COUNTS = {"entries": "files", "created": "created_files", "deleted": "deleted_files"}


def unescape_name(name: str) -> bytes:
    """rsync writes unprintable bytes of a name as \\#ooo (octal)."""
    raw = os.fsencode(name)
    return _ESCAPE.sub(lambda m: bytes([int(m[1], 8)]), raw) if b"\\#" in raw else raw


@dataclass(frozen=True)
class Item:
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


def parse_item(line: str) -> Item | None:
    """An itemized line (ITEM_FORMAT in a log file, ITEMS_ON_STDOUT), or None."""
    line, _, target = _LOG_PREFIX.sub("", line, count=1).partition(_TARGET_SEPARATOR)
    if match := _ITEM_LINE.fullmatch(line):
        linked = unescape_name(target[4:]) if target.startswith(" => ") else None
        return Item(match["update"], match["type"], match["flags"], unescape_name(match["name"]).rstrip(b"/"),
                    linked)
    if match := _DELETED_LINE.fullmatch(line):
        return Item("*", "", "", unescape_name(match["name"]).rstrip(b"/"))
    return None


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


def looks_like_progress(line: str) -> bool:
    """A cheap test for an --info=progress2 line (parse_progress is exact)."""
    return line.endswith((")", "  ")) and "%" in line and "B/s" in line


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


def ssh_failed(returncode: int, stderr_tail: list[str]) -> bool:
    """rsync's exit code alone does not tell (it may be 255, 12 or 5): ssh's messages do."""
    return returncode == 255 or any(_SSH_FAILURE.search(line) for line in stderr_tail)


DISK_FULL = "the backup disk is full"
# Every meaning describe_failure gives an exit code (outcomes.py rebuilds errors from them).
MEANINGS = frozenset({*EXIT_CODES.values(), DISK_FULL, "unknown error"})


def describe_failure(returncode: int, stderr_tail: list[str]) -> str:
    meaning = EXIT_CODES.get(returncode, "unknown error")
    boilerplate = ("rsync error:", "rsync: connection unexpectedly closed")
    detail = [line.strip() for line in stderr_tail
              if line.strip() and not line.strip().startswith(boilerplate)]
    # For these rsync's exit code depends on which of its processes notices first.
    if any("No space left on device" in line for line in detail):
        meaning = DISK_FULL
    elif ssh_failed(returncode, stderr_tail):
        meaning = EXIT_CODES[255]
    message = f"rsync exited with code {returncode} ({meaning})"
    return f"{message}: {'; '.join(detail[-3:])}" if detail else message
