"""rsync: building its command line, reading its statistics and exit codes."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
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
VANISHED = 24
SUCCESS_CODES = (0, VANISHED)

# One line per changed entry: its itemize flags, then its name.
ITEMIZE = ("--out-format=%i %n",)
_ITEM_LINE = re.compile(r"(?P<update>[.<>ch*])(?P<type>[fdLDS])(?P<flags>[^ ]{9}) (?P<name>.*)")
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


def ssh_command(config: Config) -> list[str]:
    ssh = config.ssh
    argv = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"]
    if ssh.config_file:
        argv += ["-F", ssh.config_file]
    if ssh.identity_file:
        argv += ["-i", ssh.identity_file]
    if ssh.known_hosts_file:
        argv += ["-o", f"UserKnownHostsFile={ssh.known_hosts_file}"]
    for option in ssh.options:
        argv += ["-o", option]
    return argv


def _remote_shell(config: Config, settings: HostSettings) -> list[str]:
    # rsync splits -e itself and honours shell-style quoting.
    return ["-e", shlex.join(ssh_command(config))] if settings.host.is_remote else []


def source_of(settings: HostSettings) -> str:
    """The source with exactly one trailing slash: its contents, not itself."""
    return settings.host.source.rstrip("/") + "/"


def reachability_command(config: Config, settings: HostSettings) -> list[str]:
    """List the top of the source: proves SSH, the remote rsync and read access,
    and writes nothing anywhere."""
    timeout = int(settings.rsync.timeout.total_seconds())
    return ["rsync", "--list-only", f"--timeout={timeout}", *_remote_shell(config, settings),
            "--", source_of(settings)]


def snapshot_command(config: Config, settings: HostSettings, dest: Path, link_dests: list[Path], *,
                     dry_run: bool = False, extra: tuple[str, ...] = ()) -> list[str]:
    """rsync SOURCE/ DEST/: the source's contents become the snapshot's root."""
    rsync = settings.rsync
    argv = [
        "rsync", "--archive", "--hard-links", "--acls", "--xattrs", "--numeric-ids",
        "--delete", "--delete-excluded", "--stats", "--info=progress2",
        f"--timeout={int(rsync.timeout.total_seconds())}",
    ]
    if dry_run:
        argv.append("--dry-run")
    if rsync.bwlimit:
        argv.append(f"--bwlimit={rsync.bwlimit}")
    argv += list(extra)
    argv += [f"--link-dest={path}" for path in link_dests]
    argv += [f"--exclude={pattern}" for pattern in settings.excludes]
    argv += _remote_shell(config, settings)
    argv += ["--", source_of(settings), f"{dest}/"]
    return argv


_REGULAR_COUNTS = {"entries": "files", "created": "created_files", "deleted": "deleted_files"}


def unescape_name(name: str) -> str:
    """rsync writes unprintable bytes of a name as \\#ooo (octal)."""
    raw = _ESCAPE.sub(lambda m: bytes([int(m[1], 8)]), os.fsencode(name))
    return os.fsdecode(raw)


def attribute_only_changes(lines: list[str]) -> list[str]:
    """Entries (not directories) whose itemized change is to attributes only:
    no data sent (update '.'), but permissions, owner, group, times, ACLs or
    xattrs differ. rsync would apply those in place."""
    changed = []
    for line in lines:
        match = _ITEM_LINE.fullmatch(line)
        if match and match["update"] == "." and match["type"] != "d" and match["flags"].strip("."):
            changed.append(unescape_name(match["name"]))
    return changed


def written_and_deleted(lines: list[str]) -> tuple[list[str], list[str]]:
    """From itemized output: regular files rsync wrote (new, changed, or
    hardlinked within the transfer), and entries it deleted."""
    written, deleted = [], []
    for line in lines:
        if line.startswith("*deleting "):
            deleted.append(unescape_name(line[len("*deleting"):].lstrip(" ")))
            continue
        match = _ITEM_LINE.fullmatch(line)
        if match and match["update"] in ">ch" and match["type"] == "f":
            written.append(unescape_name(match["name"]))
    return written, deleted


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


def ssh_failed(returncode: int, stderr_tail: list[str]) -> bool:
    """rsync's exit code alone does not tell (it may be 255, 12 or 5): ssh's messages do."""
    return returncode == 255 or any(_SSH_FAILURE.search(line) for line in stderr_tail)


def describe_failure(returncode: int, stderr_tail: list[str]) -> str:
    meaning = "the SSH connection failed" if ssh_failed(returncode, stderr_tail) and returncode != 255 \
        else EXIT_CODES.get(returncode, "unknown error")
    boilerplate = ("rsync error:", "rsync: connection unexpectedly closed")
    detail = [line.strip() for line in stderr_tail
              if line.strip() and not line.strip().startswith(boilerplate)]
    message = f"rsync exited with code {returncode} ({meaning})"
    return f"{message}: {'; '.join(detail[-3:])}" if detail else message
