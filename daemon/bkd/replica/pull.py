"""Pulling a replicated host (SPEC §8 "Second copy"): the complete snapshots
of the primary's host that this server wants, oldest first, each taken as a
snapshot whose source is the primary's copy of it (pipeline/snapshot.py: a
staging name, linked against the copy before it, hashed as it arrives,
resumed after a crash), checked against the primary's manifest before the
rename makes it complete, and keeping the primary's name.

What is wanted: each primary snapshot newer than the newest copy here that
this server's retention would keep, so the first pull brings the set it
keeps and nothing it pruned is pulled again. Nothing here deletes a copy;
this server's own prune stage does, by its own retention.

The primary is read with rsync alone, so a key forced to `rrsync -ro` is
enough: one listing of the host's complete snapshot names (`hourly/` without
its staging directories) and of its manifests, then per snapshot its
manifest (`meta/NAME.manifest`, of a complete snapshot only) and its tree.
What the primary sends is hostile: names are taken only when they are
snapshot names, listings and manifests are bounded, and a manifest that is
not one bkd writes is refused."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import structlog

from ..config.models import OVERRIDABLE, Config, Host, HostSettings, Replica, Retention
from ..infra import clock, exec as bkexec
from ..infra.fsutil import make_private_dir
from ..pipeline import damage, failures, manifest, retention, rsync
from ..pipeline.snapshot import (RunControl, SnapshotFailed, SnapshotResult, remove_leftovers, shared_connection,
                                 take_snapshot)
from ..tree import upstream as upstream_record
from ..tree.layout import HostDir, SnapshotName

log = structlog.get_logger()

MAX_NAMES = 1_000_000  # snapshot names taken from one listing (more than retention can keep)
MAX_MANIFEST = 1 << 30  # bytes of one manifest (some ten million files)
MANIFEST_PREFIX = ".upstream-"  # meta/.upstream-*: a manifest being fetched (a crash's leftovers go)


def wanted(primary: list[str], local: list[str], now: datetime, policy: Retention) -> list[str]:
    """The primary's snapshots to pull, oldest first: those newer than the
    newest copy here (none dated in the future) that the retention policy
    keeps among the copies here and them. Pure."""
    past = [n for n in map(SnapshotName.parse, local) if n and n.time <= now]
    newest = max(past, default=None)
    candidates = sorted({n for n in map(SnapshotName.parse, primary)
                         if n and n.time <= now and (newest is None or n > newest)})
    names = [*local, *map(str, candidates)]
    keep = {d.snapshot for d in retention.plan(names, now, policy) if d.action == "keep"}
    return [str(n) for n in candidates if str(n) in keep]


@dataclass
class Listing:
    """What the primary holds of one host."""

    found: bool = False  # it has a directory of the host
    snapshots: list[str] = field(default_factory=list)  # complete snapshots, oldest first
    manifests: dict[str, int] = field(default_factory=dict)  # snapshot → its manifest's size


def read_listing(lines: list[str], host: str) -> Listing:
    """The lines list_command printed for the host's directory (pure).
    Anything else the primary may have sent is left out."""
    listing = Listing()
    names = set()
    for line in lines:
        parsed = rsync.parse_listing(line)
        if parsed is None:
            continue
        kind, name = parsed
        top, _, rest = name.partition("/")
        if top != host:
            continue
        if not rest and kind == "d":
            listing.found = True
        where, _, leaf = rest.partition("/")
        if where == "hourly" and kind == "d" and SnapshotName.parse(leaf) and len(names) < MAX_NAMES:
            names.add(leaf)
        elif where == "meta" and kind == "-" and leaf.endswith(".manifest") and len(listing.manifests) < MAX_NAMES:
            snapshot = leaf.removesuffix(".manifest")
            size = line.split(None, 2)[1].replace(",", "")
            if SnapshotName.parse(snapshot) and size.isdigit():
                listing.manifests[snapshot] = int(size)
    listing.snapshots = [str(n) for n in sorted(map(SnapshotName.parse, names))]
    return listing


def primary_settings(config: Config, replica: Replica) -> HostSettings:
    """How the primary is reached for what is no host's (its host list, its
    state database): the [rsync] and [ssh] settings of this server."""
    return HostSettings(host=Host(name=replica.name, source=replica.source), excludes=[],
                        **{section: getattr(config, section) for section in OVERRIDABLE})


def primary_dir(replica: Replica, upstream: str) -> HostDir:
    """The host's directory on the primary: the same layout as here."""
    return HostDir.of(Path(replica.remote.path), upstream)


def _filters(host: str) -> tuple[str, ...]:
    """The host's directory, its snapshot names (no staging ones, nothing inside) and its manifests;
    a host name holds no character rsync reads as a wildcard."""
    return (f"--exclude=/{host}/hourly/.*", f"--include=/{host}/", f"--include=/{host}/hourly/",
            f"--include=/{host}/meta/", f"--include=/{host}/hourly/*", f"--include=/{host}/meta/*.manifest",
            "--exclude=*")


async def run_rsync(argv: list[str], settings: HostSettings, ssh_log: rsync.SshLog | None,
               on_stdout: Callable[[str], None] | None = None) -> None:
    """An rsync against the primary that must succeed: a failure says why as a
    snapshot's does (an ssh refusal is an `auth` failure)."""
    try:
        result = await bkexec.run(argv, on_stdout=on_stdout, stall=settings.rsync.timeout.total_seconds())
    except bkexec.Stalled as e:
        raise SnapshotFailed(f"rsync hung: {e} (rsync.timeout); its processes were stopped") from None
    if result.returncode != 0:
        said = ssh_log.said() if ssh_log else []
        raise SnapshotFailed(rsync.describe_failure(result.returncode, result.stderr_tail, said),
                             failures.ssh_refusal(said))


async def list_primary(config: Config, settings: HostSettings, replica: Replica, upstream: str,
                       ssh_log: rsync.SshLog | None, shared: str | None = None) -> Listing:
    lines: list[str] = []

    def on_line(line: str) -> None:
        if len(lines) < 2 * MAX_NAMES + 8:  # a listing of more is not one bkd's layout makes
            lines.append(line)

    source = replica.remote.at(f"{replica.remote.path.rstrip('/')}/")
    await run_rsync(rsync.list_command(config, settings, source, _filters(upstream), ssh_log, shared), settings,
                    ssh_log, on_line)
    return read_listing(lines, upstream)


async def fetch_manifest(config: Config, settings: HostSettings, replica: Replica, upstream: str, name: str,
                         host_dir: HostDir, ssh_log: rsync.SshLog | None, shared: str | None = None) -> list[bytes]:
    """The primary's manifest of snapshot name, its lines as they came (see
    checked_manifest); ManifestRefused when it is not a regular file of at
    most MAX_MANIFEST bytes."""
    where = f"the primary's {name}.manifest"
    local = host_dir.meta / f"{MANIFEST_PREFIX}{secrets.token_hex(4)}.manifest"
    try:
        source = replica.remote.at(str(primary_dir(replica, upstream).manifest_file(name)))
        await run_rsync(rsync.fetch_file_command(config, settings, source, local, MAX_MANIFEST, ssh_log,
                                                 shared=shared), settings, ssh_log)

        def read() -> list[bytes]:
            try:
                fd = os.open(local, os.O_RDONLY | os.O_NOFOLLOW)
            except FileNotFoundError:
                raise manifest.ManifestRefused(f"{where}: not a regular file of at most {MAX_MANIFEST} bytes") \
                    from None
            os.close(fd)
            return manifest.read_lines(local) or []

        return await asyncio.to_thread(read)
    finally:
        local.unlink(missing_ok=True)


def checked_manifest(lines: list[bytes], ours: list[bytes], name: str) -> list[bytes]:
    """The primary's manifest lines as the copy keeps them. The same lines as
    the copy's own (the usual case) are lines bkd wrote: nothing to parse.
    Others are parsed and sorted: ManifestRefused for a line bkd does not
    write or a path outside the snapshot."""
    if lines == ours:
        return ours
    return manifest.sorted_lines(manifest.parse(lines, f"the primary's {name}.manifest"))


def _record_damage(host_dir: HostDir, name: str, mismatches: list[dict]) -> None:
    """A copy that does not match the primary's manifest is kept and marked as
    verify marks a damaged snapshot: in the host's damage ledger, so that the
    next pull fetches those files in full rather than linking them, and the
    `integrity` alert names the snapshot."""
    ledger = damage.Ledger(host_dir)
    ledger.record(name, mismatches, [str(n) for n in host_dir.snapshots()])
    ledger.save()


@dataclass
class Outcome:
    pulled: list[SnapshotResult] = field(default_factory=list)
    wanted: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def warning(self) -> str | None:
        return "; ".join(self.warnings) or None


async def replicate(config: Config, settings: HostSettings, replica: Replica, upstream: str, *,
                    dry_run: bool = False, control: RunControl | None = None, ssh_log: rsync.SshLog | None = None,
                    on_progress: Callable[[dict], None] | None = None,
                    on_pulled: Callable[[SnapshotResult], Awaitable[None]] | None = None) -> Outcome:
    """Pull what is wanted of the primary's host upstream into settings' host,
    oldest first; on_pulled(result) after each copy is complete. A dry run
    only says what it would pull. Raises SnapshotFailed when the primary
    cannot be read; the copies pulled until then stay complete."""
    async with shared_connection(config, settings, ssh_log) as shared:  # one key exchange for all of it
        return await _replicate(config, settings, replica, upstream, dry_run, control, ssh_log, shared,
                                on_progress, on_pulled)


async def _replicate(config: Config, settings: HostSettings, replica: Replica, upstream: str, dry_run: bool,
                     control: RunControl | None, ssh_log: rsync.SshLog | None, shared: str | None,
                     on_progress: Callable[[dict], None] | None,
                     on_pulled: Callable[[SnapshotResult], Awaitable[None]] | None) -> Outcome:
    host_dir = HostDir.of(config.backup_root, settings.host.name)
    outcome = Outcome()
    checked = clock.now()
    listing = await list_primary(config, settings, replica, upstream, ssh_log, shared)
    local = await asyncio.to_thread(lambda: [str(n) for n in host_dir.snapshots()])
    outcome.wanted = wanted(listing.snapshots, local, checked, settings.retention)
    primary_newest = next((n for n in reversed(listing.snapshots) if SnapshotName.parse(n).time <= checked), None)
    log.info("replica.listed", primary_host=upstream, found=listing.found, snapshots=len(listing.snapshots),
             newest=primary_newest, wanted=len(outcome.wanted))
    if dry_run:
        return outcome
    if not listing.found:
        outcome.warnings.append(f"the primary has no host {upstream} (any more): nothing to pull; the copies here "
                                "are kept")
    previous = await asyncio.to_thread(upstream_record.read, host_dir) or upstream_record.Upstream()
    record = upstream_record.Upstream(checked, primary_newest, previous.caught_up, not listing.found)
    await asyncio.to_thread(_write_record, config.backup_root, host_dir, record)
    await asyncio.to_thread(remove_leftovers, host_dir, MANIFEST_PREFIX)
    for index, name in enumerate(outcome.wanted, 1):
        tag = {"snapshot": name, "of": f"{index}/{len(outcome.wanted)}"}
        try:
            result = await _pull_one(config, settings, replica, upstream, name, listing, host_dir, control, ssh_log,
                                     shared, on_progress and (lambda progress: on_progress({**progress, **tag})))
        except SnapshotFailed:
            again = await list_primary(config, settings, replica, upstream, ssh_log, shared)
            if name in again.snapshots:
                raise
            log.warning("replica.pruned_meanwhile", snapshot=name)  # the primary pruned it: nothing lost here
            continue
        outcome.pulled.append(result)
        if result.warning:
            outcome.warnings.append(f"{name}: {result.warning}")
        if result.mismatches:
            await asyncio.to_thread(_record_damage, host_dir, name, result.mismatches)
            shown = ", ".join(f"{m['path']} ({m['problem']})" for m in result.mismatches[:5])
            outcome.warnings.append(f"{len(result.mismatches)} file(s) of snapshot {name} do not match the primary's "
                                    f"manifest: {shown}")
            log.error("replica.mismatch", snapshot=name, files=len(result.mismatches))
        if on_pulled:
            await on_pulled(result)
    await asyncio.to_thread(_write_record, config.backup_root, host_dir,
                            upstream_record.Upstream(checked, primary_newest, checked, not listing.found))
    return outcome


def _write_record(backup_root: Path, host_dir: HostDir, record: upstream_record.Upstream) -> None:
    make_private_dir(backup_root)
    for directory in (host_dir.root, host_dir.meta):  # the first pull makes them, never through a planted symlink
        make_private_dir(directory, under=backup_root)
    upstream_record.write(host_dir, record)


async def _pull_one(config: Config, settings: HostSettings, replica: Replica, upstream: str, name: str,
                    listing: Listing, host_dir: HostDir, control: RunControl | None, ssh_log: rsync.SshLog | None,
                    shared: str | None, on_progress: Callable[[dict], None] | None) -> SnapshotResult:
    """One snapshot of the primary's, as a snapshot here whose source is its
    copy; its manifest is fetched meanwhile."""

    async def manifest_of() -> tuple[list[bytes] | None, dict | None]:
        """The primary's manifest, or what is wrong with it (the copy is then marked)."""
        if name not in listing.manifests:
            return None, {"path": "/", "problem": "the primary has no manifest of this snapshot"}
        if listing.manifests[name] > MAX_MANIFEST:
            return None, {"path": "/", "problem": f"the primary's manifest is larger than {MAX_MANIFEST} bytes"}
        try:
            return await fetch_manifest(config, settings, replica, upstream, name, host_dir, ssh_log, shared), None
        except manifest.ManifestRefused as e:
            return None, {"path": "/", "problem": str(e)}

    fetching = asyncio.create_task(manifest_of())
    refused: list[dict] = []

    async def expected(ours: list[bytes]) -> list[bytes] | None:
        lines = (await fetching)[0]
        if lines is None:
            return None
        try:
            return await asyncio.to_thread(checked_manifest, lines, ours, name)
        except manifest.ManifestRefused as e:
            refused.append({"path": "/", "problem": str(e)})
            return None

    source = replica.remote.at(f"{primary_dir(replica, upstream).hourly / name}/")
    pulling = settings.model_copy(update={"host": settings.host.model_copy(update={"source": source})})
    try:
        result = await take_snapshot(config, pulling, control=control, ssh_log=ssh_log, on_progress=on_progress,
                                     name=SnapshotName.parse(name), expected=expected, shared=shared)
    finally:
        fetching.cancel()  # nothing when it is done; a fetch the failed transfer no longer needs, else
        await asyncio.gather(fetching, return_exceptions=True)
    problem = fetching.result()[1] or (refused[0] if refused else None)
    if problem is not None:  # copied, and kept with the manifest it has; marked like a mismatch
        result.mismatches = [problem]
    return result
