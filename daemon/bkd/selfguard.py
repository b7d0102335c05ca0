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

from . import exec as bkexec
from .config.models import Config, HostSettings
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


def excludes_for(source_path: str, own: list[Path]) -> list[str]:
    """Anchored rsync excludes for each of bkd's own directories inside the
    source path (the source's contents are the transfer's root)."""
    root = Path(os.path.realpath(source_path))
    excludes = []
    for directory in own:
        if directory != root and root in directory.parents:
            excludes.append("/" + str(directory.relative_to(root)))
    return excludes


def split_source(source: str) -> tuple[str | None, str]:
    """(ssh destination, path) of a source; no destination for a local path."""
    if source.startswith("/"):
        return None, source
    host, _, path = source.partition(":")
    return host, path


def inside_own(config: Config, path: str) -> Path | None:
    """The own directory path is in (or is), if any."""
    target = Path(os.path.normpath(path))
    for directory in own_dirs(config) + [config.backup_root, config.state_dir]:
        if target == directory or directory in target.parents:
            return directory
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
        destination, _ = split_source(settings.host.source)
        return LOCAL if destination is None else self._verdicts.get(destination)

    async def verdict(self, settings: HostSettings, fresh: bool = False) -> Verdict:
        destination, _ = split_source(settings.host.source)
        return LOCAL if destination is None else await self.verdict_of(destination, fresh)

    async def verdict_of(self, destination: str, fresh: bool = False) -> Verdict:
        """Whether an ssh destination ([user@]host) is this machine."""
        if fresh:
            self._verdicts.pop(destination, None)
        if destination not in self._verdicts:
            probe = self._probes.get(destination)
            if probe is None or probe.done():  # one probe per host at a time
                probe = self._probes[destination] = asyncio.ensure_future(self._probe(destination))
            self._verdicts[destination] = await asyncio.shield(probe)
        return self._verdicts[destination]

    async def excludes(self, settings: HostSettings) -> list[str]:
        """What to exclude from this host's source so that bkd never copies itself."""
        verdict = await self.verdict(settings)
        if not verdict.same:
            return []
        return excludes_for(split_source(settings.host.source)[1], own_dirs(self.config))

    async def _probe(self, destination: str) -> Verdict:
        with rsync.SshLog() as ssh_log:
            return await self._probe_with(destination, ssh_log)

    async def _probe_with(self, destination: str, ssh_log: rsync.SshLog) -> Verdict:
        ssh = shlex.join(rsync.ssh_command(self.config, ssh_log.path))
        try:
            ours = MACHINE_ID.read_text().strip()
        except OSError as e:
            return Verdict(None, f"cannot read this machine's {MACHINE_ID}: {e.strerror}")
        with tempfile.TemporaryDirectory(prefix="bkd-id-") as scratch:
            fetched = Path(scratch) / "machine-id"
            result = await bkexec.run(["rsync", "--timeout=30", "-e", ssh, "--",
                                       f"{destination}:{MACHINE_ID}", str(fetched)])
            if result.returncode != 0:
                why = rsync.describe_failure(result.returncode, result.stderr_tail, ssh_log.said())
                log.warning("selfguard.unknown", destination=destination, error=why)
                return Verdict(None, f"cannot tell whether {destination} is this machine "
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
            seen = await bkexec.run(["rsync", "--list-only", "--timeout=30", "-e", ssh, "--",
                                     f"{destination}:{marker}"])
        finally:
            marker.unlink(missing_ok=True)
        if seen.returncode == 0:
            return Verdict(True, "this machine (same machine-id, and a marker made here is visible there)")
        return Verdict(False, "another machine with the same machine-id (a clone: a marker made here is not there)")
