"""Whether bkd can back up a host: the readiness checks `bkd host add` runs
before it writes anything, and `bkctl hosts test` runs on configured hosts.

- login: ssh reaches the host, its key is the pinned one, bkd's key is accepted;
- rsync: rsync starts there and speaks protocol 32 or newer (rsync ≥ 3.4.0);
- read: the source's top directory can be read;
- estimate (host add): how many files and bytes a first pull brings, from a
  dry run with the host's excludes, which also reads the whole tree;
- space (host add): the backup root has room and inodes for that.

All of it goes through rsync alone, so it works through a key restricted to
`rrsync -ro` (which lets nothing else run), and writes nothing anywhere.
Each check says what it found in bkd's own words and, when it fails, what to
do (`problem` names the failure, so `host add` can give its own, exact fix);
what the tools and the host printed goes only into `detail`, which is for
admins. A host can lie about its rsync's protocol: that misleads only this
advice, never what a run does."""

from __future__ import annotations

import os
import tempfile
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

from bkctl.fmt import size

from . import exec as bkexec
from . import failures
from .config.models import Config, HostSettings
from .pipeline import rsync

# What failed, for the advice: each has a fix of its own below.
UNREACHABLE, HOST_KEY, REFUSED, NO_RSYNC, OLD_RSYNC, UNREADABLE, NO_SPACE = (
    "unreachable", "host_key", "refused", "no_rsync", "old_rsync", "unreadable", "no_space")


def fix(problem: str, config: Config, settings: HostSettings) -> str:
    """What to do about a failed check, in general terms (`bkd host add` says it exactly)."""
    remote = settings.host.remote
    alias = remote.host if remote else settings.host.name
    known_hosts = config.ssh.known_hosts_file or "~/.ssh/known_hosts"
    return {
        UNREACHABLE: "check that the host is up and that sshd listens at the address and port ssh uses for "
                     f"{alias} (its Host block in bkd's ssh config; `bkd host add` writes it)",
        HOST_KEY: "if the host was reinstalled, compare its new key on the host (ssh-keygen -lf "
                  "/etc/ssh/ssh_host_ed25519_key.pub) with the one `bkd host add` shows, remove the old pin "
                  f"(ssh-keygen -R {alias} -f {known_hosts}) and run `bkd host add` again; bkd never accepts "
                  "a changed host key by itself",
        REFUSED: "put bkd's key on the host: the authorized_keys line `bkd host add` prints, in the login's "
                 "~/.ssh/authorized_keys",
        NO_RSYNC: "install rsync 3.4.0 or newer on the host (apt-get install rsync; it brings rrsync); a "
                  "forced command (rrsync) must name an existing directory that holds the source; with "
                  "--sudo, the sudoers lines `bkd host add` prints must be in place",
        OLD_RSYNC: "upgrade rsync on the host to 3.4.0 or newer (older ones have known security bugs)",
        UNREADABLE: f"{settings.host.path} must exist on the host and the login must be able to read all of "
                    "it: log in as root, or use `bkd host add --sudo` for a login that may run rrsync as root",
        NO_SPACE: "free space on the backup root, or give it a bigger disk, before the first pull",
    }[problem]


STATS_LINES = 64  # the end of a dry run's output, where its statistics are


@dataclass(frozen=True)
class Check:
    name: str  # login, rsync, read, estimate, space
    ok: bool
    message: str  # what was found, in bkd's words (nothing the host printed)
    problem: str | None = None  # what failed (UNREACHABLE, …)
    fix: str | None = None  # what to do about it

    def as_dict(self) -> dict:
        return {"check": self.name, "ok": self.ok, "message": self.message, "fix": self.fix}


@dataclass
class Readiness:
    checks: list[Check] = field(default_factory=list)
    detail: str | None = None  # what the tools printed when something failed (admins only)
    files: int | None = None  # the estimate: regular files and bytes of a first pull
    bytes: int | None = None
    entries: int | None = None

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def failed(self) -> Check | None:
        return next((check for check in self.checks if not check.ok), None)

    @property
    def error(self) -> str | None:
        """The first failure for every role: the check and bkd's words for it."""
        failed = self.failed
        return f"{failed.name}: {failed.message}" if failed else None


async def check(config: Config, settings: HostSettings, estimate: bool = False) -> Readiness:
    """Run the checks in order; a check that fails stops the ones that need it."""
    found = Readiness()
    await _reach(config, settings, found)
    if estimate and found.ok:
        await _estimate(config, settings, found)
        if found.ok:
            found.checks.append(space(config.backup_root, found.bytes or 0, found.entries or 0))
    found.checks = [c if c.ok or c.fix else replace(c, fix=fix(c.problem, config, settings)) for c in found.checks]
    return found


async def _reach(config: Config, settings: HostSettings, found: Readiness) -> None:
    first: list[str] = []

    def on_stdout(line: str) -> None:
        if not first:
            first.append(line)

    with rsync.ssh_log_for(settings) or nullcontext() as ssh_log:
        result = await bkexec.run(rsync.reachability_command(config, settings, ssh_log), on_stdout=on_stdout)
        said = ssh_log.said() if ssh_log else None
    host, path = settings.host, settings.host.path.rstrip("/") or "/"
    remote = host.remote
    if result.returncode != 0:
        found.detail = rsync.describe_failure(result.returncode, result.stderr_tail, said)
    failure = category(result.returncode, said)
    if remote is None:  # this machine's own rsync, checked when the daemon starts
        found.checks.append(Check("read", True, f"can read {path}") if result.returncode == 0 else
                            Check("read", False, f"cannot read {path}: {failure}", UNREADABLE))
        return
    protocol = rsync.remote_protocol(first)
    login = f"{remote.destination} with {_key(config)}"
    if protocol is None and result.returncode != 0:
        problem = login_problem(result.returncode, said)
        if problem == HOST_KEY:
            found.checks.append(Check("login", False, f"the host key of {remote.host} is not the one pinned in "
                                                      f"{config.ssh.known_hosts_file or 'known_hosts'}", HOST_KEY))
        elif problem == REFUSED:
            refused = (f"{remote.destination} refused bkd's key {config.ssh.identity_file}" if config.ssh.identity_file
                       else f"{remote.destination} refused the daemon user's SSH key")
            found.checks.append(Check("login", False, refused, REFUSED))
        elif problem == UNREACHABLE:
            found.checks.append(Check("login", False, f"cannot connect to {remote.host}", UNREACHABLE))
        else:
            found.checks.append(Check("login", True, f"logged in to {login}"))
            found.checks.append(Check("rsync", False, f"rsync did not start on the host ({failure})", NO_RSYNC))
        return
    found.checks.append(Check("login", True, f"logged in to {login}"))
    if protocol is None:
        found.checks.append(Check("rsync", False, "the host's rsync did not say which protocol it speaks",
                                  OLD_RSYNC))
    elif protocol < rsync.MIN_PROTOCOL:
        found.checks.append(Check("rsync", False, f"the host's rsync speaks protocol {protocol}: "
                                                  "it is older than 3.4.0", OLD_RSYNC))
    else:
        found.checks.append(Check("rsync", True, f"the host's rsync speaks protocol {protocol} (3.4.0 or newer)"))
    found.checks.append(Check("read", True, f"can read {path}") if result.returncode == 0 else
                        Check("read", False, f"cannot read {path}: {failure}", UNREADABLE))


def login_problem(returncode: int, ssh_said: list[str] | None) -> str | None:
    """Why ssh ran no command on the host: HOST_KEY, REFUSED, UNREACHABLE, or
    None (it logged in; whatever failed, failed there). Told by failures.py and
    rsync.ssh_failed from the local ssh client's own messages (SshLog.said),
    never from what the host prints: the one place the checks and a restore's
    probe ask."""
    refusal = failures.ssh_refusal(ssh_said or [])
    if refusal == failures.HOST_KEY:
        return HOST_KEY
    if refusal == failures.LOGIN:
        return REFUSED
    return UNREACHABLE if rsync.ssh_failed(returncode, ssh_said) else None


def category(returncode: int, ssh_said: list[str] | None = None) -> str:
    """rsync's exit code and its meaning, as every role may read it (what
    describe_failure says before quoting any output)."""
    return rsync.describe_failure(returncode, [], ssh_said)


def _key(config: Config) -> str:
    return f"bkd's key {config.ssh.identity_file}" if config.ssh.identity_file else "the daemon user's SSH key"


async def _estimate(config: Config, settings: HostSettings, found: Readiness) -> None:
    """A dry run of a first pull into an empty directory: the file list with
    the host's excludes, read in full on the host, nothing written."""
    tail: deque[str] = deque(maxlen=STATS_LINES)
    with tempfile.TemporaryDirectory(prefix="bkd-estimate-") as empty:
        argv = rsync.snapshot_command(config, settings, Path(empty), [], dry_run=True, progress=False,
                                      mirror=False)
        result = await bkexec.run(argv, on_stdout=tail.append)
    stats = rsync.parse_stats(list(tail))
    if result.returncode != 0 or "entries" not in stats:
        found.detail = rsync.describe_failure(result.returncode, result.stderr_tail)
        where = settings.host.path.rstrip("/") or "/"
        found.checks.append(Check("estimate", False, f"cannot read all of {where}: {category(result.returncode)}",
                                  UNREADABLE))
        return
    found.files, found.bytes, found.entries = stats.get("files", 0), stats.get("bytes", 0), stats["entries"]
    brings = f"{_count(found.files, 'file')} ({size(found.bytes)}) in {_count(found.entries, 'entry', 'entries')}"
    found.checks.append(Check("estimate", True, f"a first pull brings {brings}"))


def _count(number: int, one: str, many: str | None = None) -> str:
    return f"{number:,} {one if number == 1 else many or one + 's'}"


def space(backup_root: Path, needed_bytes: int, needed_inodes: int) -> Check:
    """Room on the backup root's filesystem (or where it will be made) for a first pull."""
    where = backup_root
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        stat = os.statvfs(where)
    except OSError as e:
        return Check("space", False, f"cannot tell the free space of {where}: {e.strerror}", NO_SPACE)
    free, inodes = stat.f_bavail * stat.f_frsize, stat.f_favail
    if free < needed_bytes:
        return Check("space", False, f"{where} has {size(free)} free, a first pull needs {size(needed_bytes)}",
                     NO_SPACE)
    if stat.f_files and inodes < needed_inodes:  # f_files 0: a filesystem without an inode limit
        return Check("space", False, f"{where} has {inodes:,} inodes free, a first pull needs {needed_inodes:,}",
                     NO_SPACE)
    return Check("space", True, f"{where} has {size(free)} free" + (f" and {inodes:,} inodes" if stat.f_files else ""))
