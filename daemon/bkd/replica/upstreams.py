"""The replica's side of each [[replica]] (SPEC §8 "Second copy"): which of
the primary's hosts are copied here, and the generations of its state
database. The `replicas` loop visits each primary at start and then every
`every`:

1. It lists the primary's backup root (its top only, with rsync, as every
   read of the primary). The host directories there that the replica's
   `hosts` globs take, with those the replica has here, are the replica's
   hosts in the live config (Runtime.replicated_hosts): each then has its
   own runs, which pull it (replica/pull.py). A host the primary drops stays
   a host here, its copies kept.
2. It pulls the primary's `.bkd-state/bkd.sqlite` (state/copy.py writes it)
   into a new generation when it differs from the newest one kept, and
   raises an `integrity` alert when its audit chain does not extend the
   one before it (replica/generations.py).

A primary that cannot be read is a `run_failed` alert (an `auth` alert when
it refused the key or its host key is not the pinned one) about no host,
subject "replica NAME", resolved by the next good visit; each host's own
runs fail too, and its copies stay."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import structlog

from ..alerts.service import AlertKind, Alerts
from ..config.models import Config, Replica, valid_host_name
from ..config.runtime import Runtime
from ..infra import clock
from ..infra.fsutil import fsync_dir, fsync_file, make_private_dir
from ..infra.supervise import woken
from ..pipeline import failures, rsync
from ..pipeline.outcomes import clip, public_error
from ..pipeline.snapshot import SnapshotFailed, shared_connection
from ..tree.layout import PARTIAL_PREFIX, STATE_COPY, SnapshotName, replicated_dirs, upstream_state_dir
from . import generations
from .pull import primary_settings, run_rsync

log = structlog.get_logger()

MAX_HOSTS = 10_000  # of one primary's listing: more is not a fleet, it is a primary gone wrong
MAX_STATE = 1 << 36  # bytes of a state database copy
_STATE_FILE = f"{STATE_COPY}/{generations.DATABASE}"


@dataclass(frozen=True)
class Top:
    hosts: list[str]  # the host directories of the primary's backup root
    state: bool  # it holds .bkd-state/bkd.sqlite


def read_top(lines: list[str]) -> Top:
    """What the listing of a primary's backup root says (pure): its host
    directories (names bkd's host-name rule takes, none of bkd's own) and
    whether it has a state copy."""
    hosts, state = set(), False
    for line in lines:
        parsed = rsync.parse_listing(line)
        if parsed is None:
            continue
        kind, name = parsed
        if kind == "d" and "/" not in name and valid_host_name(name) and len(hosts) < MAX_HOSTS:
            hosts.add(name)
        elif kind == "-" and name == _STATE_FILE:
            state = True
    return Top(sorted(hosts), state)


@dataclass
class Visit:
    """The last visit of a primary, for `bkctl replicas`."""

    started: datetime
    error: str | None = None  # for every role: what failed
    detail: str | None = None  # for admins: what rsync and ssh said
    hosts: int = 0  # the primary's hosts this replica takes
    state_error: str | None = None  # for every role: why its state database could not be pulled


def found_here(runtime: Runtime) -> None:
    """At start: the replicated hosts that have a directory here are hosts at
    once, whether or not their primary can be reached."""
    config = runtime.loaded
    for replica in config.replica:
        runtime.replicated_hosts(replica.name, replicated_dirs(config.backup_root, replica.name))


def _subject(replica: Replica) -> str:
    return f"replica {replica.name}"


class Upstreams:
    def __init__(self, runtime: Runtime, alerts: Alerts):
        self.runtime = runtime
        self.alerts = alerts
        self.wake = asyncio.Event()  # a reload: replicas or their `every` may have changed
        runtime.on_reload(lambda old, new: self.wake.set())
        self.visits: dict[str, Visit] = {}

    async def run(self) -> None:
        while True:
            self.wake.clear()
            config = self.runtime.config
            soonest = clock.now() + timedelta(hours=1)
            for replica in config.replica:
                visit = self.visits.get(replica.name)
                due = visit.started + replica.every if visit else clock.now()
                if due <= clock.now():
                    await self.visit(config, replica)
                    due = clock.now() + replica.every
                soonest = min(soonest, due)
            await woken(self.wake, max(1.0, (soonest - clock.now()).total_seconds()))

    async def visit(self, config: Config, replica: Replica) -> Visit:
        """List the primary, take its hosts, and pull its state database."""
        visit = self.visits[replica.name] = Visit(clock.now())
        settings = primary_settings(config, replica)
        with rsync.ssh_log_for(settings) or nullcontext() as ssh_log:
            async with shared_connection(config, settings, ssh_log) as shared:  # one key exchange for both
                try:
                    top = await _list_top(config, replica, settings, ssh_log, shared)
                except SnapshotFailed as e:
                    visit.error, visit.detail = public_error("replica", e), clip(str(e))
                    log.warning("replica.unreachable", replica=replica.name, error=str(e))
                    kind = AlertKind.AUTH if e.refusal else AlertKind.RUN_FAILED
                    message = (f"primary {replica.name} ({replica.source}): " +
                               (failures.auth_message(e.refusal) if e.refusal else f"cannot be read: {visit.error}"))
                    await self.alerts.raise_(kind, None, message, _subject(replica))
                    return visit
                for kind in (AlertKind.AUTH, AlertKind.RUN_FAILED):
                    await self.alerts.resolve(kind, None, _subject(replica))
                here = await asyncio.to_thread(replicated_dirs, config.backup_root, replica.name)
                taken = [host for host in top.hosts if replica.covers(host)]
                if too_long := [host for host in taken if replica.host(host) is None]:
                    log.warning("replica.hosts_not_taken", replica=replica.name, hosts=too_long[:10],
                                reason="their names here, NAME.HOST, would be longer than 64 characters")
                visit.hosts = len(taken) - len(too_long)
                self.runtime.replicated_hosts(replica.name, {*taken, *here})
                log.info("replica.visited", replica=replica.name, hosts=len(taken), state=top.state)
                if top.state:
                    try:
                        await self.pull_state(config, replica, settings, ssh_log, shared)
                    except (SnapshotFailed, OSError) as e:  # the hosts are pulled anyway; the next visit tries again
                        visit.state_error = public_error("state", e)
                        log.warning("replica.state_failed", replica=replica.name, error=str(e))
        return visit

    async def pull_state(self, config: Config, replica: Replica, settings, ssh_log, shared: str | None) -> None:
        """The primary's state copy, as a new generation when it changed."""
        backup_root = config.backup_root
        directory = upstream_state_dir(backup_root, replica.name)
        await asyncio.to_thread(make_private_dir, directory, backup_root)
        await asyncio.to_thread(_remove_partials, directory)
        kept = await asyncio.to_thread(generations.names, directory)
        marks = {name: await asyncio.to_thread(generations.read_mark, directory / name) for name in kept}
        newest = kept[-1] if kept else None
        partial = directory / f"{PARTIAL_PREFIX}{secrets.token_hex(4)}"
        await asyncio.to_thread(make_private_dir, partial, backup_root)
        try:
            source = replica.remote.at(f"{replica.remote.path.rstrip('/')}/{_STATE_FILE}")
            await run_rsync(rsync.fetch_file_command(config, settings, source, partial / generations.DATABASE,
                                                     MAX_STATE, ssh_log, basis=directory / newest if newest else None,
                                                     shared=shared), settings, ssh_log)
            if not (partial / generations.DATABASE).is_file():
                raise SnapshotFailed(f"the primary's {_STATE_FILE} is larger than {MAX_STATE} bytes")
            since = next((name for name in reversed(kept) if marks[name] is not None and marks[name].problem is None),
                         None)
            chain = await asyncio.to_thread(generations.read_chain, partial / generations.DATABASE,
                                            marks[since] if since else None, since)
            if newest is not None and marks[newest] is not None and marks[newest].sha256 == chain.sha256:
                return  # nothing changed there since the newest generation
            name = await asyncio.to_thread(_complete, directory, partial, chain)
        finally:
            await asyncio.to_thread(shutil.rmtree, partial, True)
        log.info("replica.state_pulled", replica=replica.name, generation=name, entries=chain.entries,
                 head=chain.head_id, ok=chain.ok)
        subject = f"{_subject(replica)} state"
        if chain.ok:
            await self.alerts.resolve(AlertKind.INTEGRITY, None, subject)
        else:
            await self.alerts.raise_(
                AlertKind.INTEGRITY, None,
                f"the state database of primary {replica.name}, pulled as generation {name}: {chain.message()}; "
                f"the generations before and after are kept in {directory}", subject)
        all_kept = [*kept, name]
        marks[name] = chain
        for doomed in generations.doomed(all_kept, marks, clock.now()):
            await asyncio.to_thread(shutil.rmtree, directory / doomed, True)


async def _list_top(config: Config, replica: Replica, settings, ssh_log, shared: str | None) -> Top:
    """The primary's backup root: its top only, and its state copy."""
    lines: list[str] = []

    def on_line(line: str) -> None:
        if len(lines) < MAX_HOSTS + 8:
            lines.append(line)

    source = replica.remote.at(f"{replica.remote.path.rstrip('/')}/")
    top_only = (f"--include=/{_STATE_FILE}", "--include=/*/", "--exclude=*")
    await run_rsync(rsync.list_command(config, settings, source, top_only, ssh_log, shared), settings, ssh_log,
                    on_line)
    return read_top(lines)


def _remove_partials(directory: Path) -> None:
    for entry in os.scandir(directory):
        if entry.name.startswith(PARTIAL_PREFIX):
            shutil.rmtree(entry.path, ignore_errors=True)


def _complete(directory: Path, partial: Path, chain: generations.Chain) -> str:
    """The partial as a generation named by this moment (never one that exists)."""
    generations.write_mark(partial, chain)
    fsync_file(partial / generations.DATABASE)
    name = SnapshotName(clock.now().replace(microsecond=0))
    while (directory / str(name)).exists():
        name = SnapshotName(name.time, name.seq + 1)
    partial.rename(directory / str(name))
    fsync_dir(directory)
    return str(name)
