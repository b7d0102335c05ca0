"""bkd never backs up itself (SPEC §7): a source that contains the backup root
or state_dir — a local `/`, or this very machine over SSH — gets them
excluded, and a restore never writes into them on this machine.

Whether an SSH host is this machine is found out once per config load (or
`hosts test`): its /etc/machine-id, fetched with rsync, must equal ours, and
— since cloned machines share one — a marker file with a random name, made
here for the occasion, must be visible there too. When it cannot be known
(the host is down), nothing is excluded: excluding by path on another
machine would lose that machine's own directories of the same name. `hosts`
says which it is."""

from __future__ import annotations

import asyncio
import os
import secrets
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path

import structlog

from bkctl import mounts

from . import exec as bkexec
from .config import patterns
from .config.models import Config, HostSettings
from .config.remote import Remote
from .outcomes import public_message
from .pipeline import rsync

log = structlog.get_logger()

MACHINE_ID = Path("/etc/machine-id")


@dataclass(frozen=True)
class Verdict:
    same: bool | None  # None: cannot tell
    how: str  # for every role
    detail: str | None = None  # the probe's output, when it failed: admins only


LOCAL = Verdict(True, "a local path")


def own_dirs(config: Config) -> list[Path]:
    return [Path(os.path.realpath(d)) for d in (config.backup_root, config.state_dir)]


def inside_source(source_path: str, own: list[Path]) -> list[str]:
    """Each of bkd's own directories inside the source path, as a path from
    the source's root (its contents are the transfer's root): '/bkd' for
    /srv/bkd in a source /srv/."""
    root = Path(os.path.realpath(source_path))
    return ["/" + str(directory.relative_to(root)) for directory in own
            if directory != root and root in directory.parents]


def effective_excludes(settings: HostSettings, own_paths: list[str]) -> list[str]:
    """What rsync gets: the host's excludes, then one pattern matching
    exactly each of bkd's own directories in its source."""
    return [*settings.excludes, *(patterns.anchored(path) for path in own_paths)]


def inside_own(config: Config, identities, location: tuple[int, str] | None = None) -> tuple[str, Path] | None:
    """Which of bkd's own directories (what it is called, its path) a restore
    writes inside, if any: one of the directories it writes under (given as
    (st_dev, st_ino), that directory and each of its parents) is one of them,
    or that directory's place in its filesystem (mounts.location) lies inside
    one of theirs — whatever path, bind mount or mount namespace led there."""
    given = {tuple(identity) for identity in identities}
    for what, directory in (("the backup root", config.backup_root), ("state_dir", config.state_dir)):
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            own = mounts.location(fd)
        finally:
            os.close(fd)
        if (st.st_dev, st.st_ino) in given or (location and own and mounts.within(location, own)):
            return what, directory
    return None


class SelfGuard:
    def __init__(self, config: Config):
        self.config = config
        self._verdicts: dict[str, Verdict] = {}
        self._probes: dict[str, asyncio.Task] = {}

    def reloaded(self, config: Config) -> None:
        """A new config: find out again (hosts, keys and addresses may have changed)."""
        self.config = config
        self._verdicts.clear()

    def known(self, settings: HostSettings) -> Verdict | None:
        remote = settings.host.remote
        return LOCAL if remote is None else self._verdicts.get(remote.spec)

    async def verdict(self, settings: HostSettings, fresh: bool = False) -> Verdict:
        remote = settings.host.remote
        return LOCAL if remote is None else await self.verdict_of(remote, fresh, settings.host.rsync_path)

    async def verdict_of(self, remote: Remote, fresh: bool = False, rsync_path: str = "") -> Verdict:
        """Whether the host of remote ([user@]host) is this machine (rsync_path:
        how rsync starts there, host.rsync_path)."""
        key = remote.spec
        if fresh:
            self._verdicts.pop(key, None)
        if key not in self._verdicts:
            probe = self._probes.get(key)
            if probe is None or probe.done():  # one probe per host at a time
                probe = self._probes[key] = asyncio.ensure_future(self._probe(remote, rsync_path))
            self._verdicts[key] = await asyncio.shield(probe)
        return self._verdicts[key]

    async def own_inside(self, settings: HostSettings) -> list[str]:
        """bkd's own directories in this host's source (paths from its root), to exclude."""
        verdict = await self.verdict(settings)
        if not verdict.same:
            return []
        return inside_source(settings.host.path, own_dirs(self.config))

    async def _probe(self, remote: Remote, rsync_path: str) -> Verdict:
        with rsync.SshLog() as ssh_log:
            return await self._probe_with(remote, rsync_path, ssh_log)

    async def _probe_with(self, remote: Remote, rsync_path: str, ssh_log: rsync.SshLog) -> Verdict:
        ssh = ["-e", shlex.join(rsync.ssh_command(self.config, ssh_log.path)), *rsync.rsync_path_option(rsync_path)]
        try:
            ours = MACHINE_ID.read_text().strip()
        except OSError as e:
            return Verdict(None, f"cannot read this machine's {MACHINE_ID}: {e.strerror}")
        with tempfile.TemporaryDirectory(prefix="bkd-id-") as scratch:
            fetched = Path(scratch) / "machine-id"
            result = await bkexec.run(["rsync", "--timeout=30", *ssh, "--",
                                       remote.at(str(MACHINE_ID)), str(fetched)])
            if result.returncode != 0:
                why = rsync.describe_failure(result.returncode, result.stderr_tail, ssh_log.said())
                log.warning("selfguard.unknown", destination=remote.spec, error=why)
                return Verdict(None, f"cannot tell whether {remote.spec} is this machine "
                                     f"({public_message(why, 'rsync failed')}); "
                                     "nothing of bkd's own is excluded from its source", why)
            if fetched.read_text().strip() != ours:
                return Verdict(False, "another machine (its machine-id differs)")
        # The same machine-id: a clone, or really this machine? A marker made here must be visible there.
        marker_dir = self.config.socket.parent
        marker = marker_dir / f".bkd-self-{secrets.token_hex(8)}"
        try:
            marker.touch(mode=0o644)
            os.chmod(marker, 0o644)
        except OSError as e:
            return Verdict(None, f"cannot make a marker in {marker_dir} ({e.strerror}); "
                                 "nothing of bkd's own is excluded from its source")
        try:
            seen = await bkexec.run(["rsync", "--list-only", "--timeout=30", *ssh, "--",
                                     remote.at(str(marker))])
        finally:
            marker.unlink(missing_ok=True)
        if seen.returncode == 0:
            return Verdict(True, "this machine (same machine-id, and a marker made here is visible there)")
        return Verdict(False, "another machine with the same machine-id (a clone: a marker made here is not there)")
