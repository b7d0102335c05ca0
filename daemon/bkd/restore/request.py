"""A restore request, checked before its job exists (SPEC §5, §7): the
snapshot and PATH inside it, DEST (an absolute local path, or
`[user@]host:/path` read by config.remote.Remote), who may write a remote
DEST, bkd's own directories, what exists under DEST along PATH and what
would conflict. What passes is a frozen RestoreTarget that the run carries;
a local DEST also gets a one-time token its receiver attaches with."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ..config.models import Config
from ..config.runtime import Runtime
from ..infra.errors import Denied, InvalidArgument
from ..pipeline import selfguard, tarstream
from ..pipeline.selfguard import SelfGuard
from ..tree import browse, copies
from ..tree.layout import HostDir
from . import transfer
from .receivers import Receivers
from .transfer import Where


@dataclass(frozen=True)
class RestoreTarget:
    """What a restore copies and where: checked before the job exists."""

    snapshot: str
    path: str  # PATH as the caller wrote it
    dest: str
    overwrite: bool
    sources: tuple[bytes, ...]  # source arguments relative to the snapshot's root (see transfer.sources)
    into: bytes  # the directory under DEST they are received into
    options: tuple[str, ...]  # the options of the daemon's rsync, the sender
    where: Where  # what exists under DEST along PATH
    token: str | None = None  # a local DEST: the caller's receiver attaches with this
    missing: bytes = b""  # ... and writes there, or (DEST not there yet) into this, relative to where it runs


@dataclass(frozen=True)
class Caller:
    """Who asks, as the socket told it once."""

    uid: int
    user: str
    writes_remotely: bool  # may write a host:path DEST with the daemon's SSH identity ([access] remote_restorers)


@dataclass(frozen=True)
class Received:
    """What the caller's bkctl found under a local DEST, as the caller (the `receiver` param)."""

    kinds: tuple[str, ...]  # one per directory of DEST/PATH: D, F, L or N
    dest_empty: bool
    ancestors: tuple[tuple[int, int], ...]  # (st_dev, st_ino) of the directory it writes under and its parents
    location: tuple[int, str] | None  # that directory's place in its filesystem (bkctl.mounts)
    missing: bytes  # a DEST not there yet, relative to its deepest existing parent


class Restores:
    def __init__(self, runtime: Runtime, guard: SelfGuard, receivers: Receivers):
        self.runtime = runtime
        self.guard = guard
        self.receivers = receivers

    async def check(self, host_dir: HostDir, snapshot: str, path: str, dest: str, overwrite: bool, dry_run: bool,
                    received: Received | None, caller: Caller) -> RestoreTarget:
        """Everything that can be checked before starting: the snapshot, the path
        inside it, the destination and what is already there."""
        config = self.runtime.config
        copy = copies.resolve(host_dir, snapshot)  # an hourly snapshot, a monthly copy or an archive
        tree = await tarstream.tree_of(copy)
        await asyncio.to_thread(tree.lookup, path)
        parts = browse.components(path)
        remote = transfer.check_destination(dest)
        if remote and not caller.writes_remotely:
            raise Denied(f"permission denied: a restore to host:path writes with bkd's own restore key; "
                         f"it needs root or a group in [access] remote_restorers, and {caller.user} "
                         f"(uid {caller.uid}) is in none")
        if remote:
            if received is not None:
                raise InvalidArgument("invalid params: receiver: a host:path DEST is written by the daemon")
            transfer.restore_key(config)  # refused at once without one
            where = await transfer.remote_where(config, dest, parts)
            rsync_path = transfer.rsync_path_at(config, remote, host_dir.root.name)
            if (await self.guard.verdict_of(remote, rsync_path=rsync_path)).same:  # this very machine, over SSH
                _outside_own(config, dest, where)
        else:
            if received is None:
                raise InvalidArgument("invalid params: receiver: a local DEST is received by the caller "
                                      "(bkctl restore does this)")
            if len(received.kinds) != len(parts) + 1:
                raise InvalidArgument("invalid params: receiver.kinds: one per directory of DEST/PATH")
            where = Where(received.kinds, received.dest_empty, identities=received.ancestors,
                          location=received.location)
            _outside_own(config, dest, where)
        transfer.conflict(where, dest, parts, overwrite)
        top_level = await asyncio.to_thread(tree.top_level) if not parts else []
        source_args, into = transfer.sources(parts, where, top_level)
        options = transfer.options(overwrite, dry_run)
        token = None if remote else self.receivers.expect(caller.uid)
        return RestoreTarget(copy.ref, path, dest, overwrite, tuple(source_args), into, tuple(options), where,
                             token, received.missing if received else b"")


def _outside_own(config: Config, dest: str, where: Where) -> None:
    """A restore never writes into bkd's own directories, by whatever path
    (a symlink, a bind mount of them or of a directory inside them) DEST
    reaches them: the directory it writes under and its parents are compared
    with them by device and inode, and by place in their filesystem."""
    if not where.identities and where.location is None:
        raise InvalidArgument(f"invalid params: dest: cannot tell whether {dest} is inside bkd's own directories")
    own = selfguard.inside_own(config, where.identities, where.location)
    if own is not None:
        what, directory = own
        raise InvalidArgument(f"invalid params: dest: {dest} is inside {what} ({directory}); restore elsewhere")
