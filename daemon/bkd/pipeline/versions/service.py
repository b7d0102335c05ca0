"""Keeping every host's version index in line with its copies, and answering from it.

`sync` brings one index in line with the host's directory: snapshots newer
than its newest are added from their change records (or, without a usable
one, from the two trees), and the kept copies — snapshots, monthly copies,
archives — are set as its holders, which forgets whatever no copy holds
any more. It runs after each snapshot (the run's `index_s`), after every
prune, expiry and heavy stage, and before every answer, so an answer is
never about copies that are gone, whatever was missed.

Indexes are written without fsync (derived data: an application crash
leaves them whole). While any is open, `versions/.open` names the boot it
was opened in; a clean stop fsyncs them all and removes it. One found
from another boot means the system went down under open indexes: they
are discarded and rebuilt.

An index that is missing or damaged, or that cannot follow the directory
(a snapshot older than its newest appeared; the snapshot it would add to
is gone), is rebuilt from the kept copies in the background: into a new
file, swapped in when whole. Meanwhile `find` and `du` answer -32007 with
how far it is, and snapshot runs skip their index step (the rebuild takes
their snapshots in when it ends)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import structlog

from ...infra import clock
from ...infra.errors import NotReady
from ...infra.fsutil import fsync_dir, fsync_file, write_atomic
from ...infra.supervise import woken
from ...infra.threads import in_own_thread
from ...tree import copies
from ...tree.layout import HostDir, SnapshotName
from .. import changes as records, manifest
from .changes import between
from .index import ARCHIVE, HOURLY, MONTHLY, Holder, Index, IndexDamaged, Member
from .pattern import compile_pattern, exactly

log = structlog.get_logger()

SAMPLE = 256  # files of a monthly copy compared by inode to tell which snapshot it was made of
ATTEMPTS = 3  # a rebuild that loses a tree it was reading (pruned meanwhile) starts again this often
OPEN_AT_MOST = 4  # indexes kept open (a connection and its page cache each); the others reopen when next used
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def _boot() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return "unknown"


class Cancelled(Exception):
    """A rebuild stopped because the daemon is stopping."""


@dataclass(frozen=True)
class _Planned:
    """A member of the chain to build: a snapshot, or a monthly copy standing in for its pruned one."""

    name: str
    time: int
    tree: Path
    manifest: Path | None
    changes: Path | None  # its change record, if it has one


@dataclass
class _Host:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    index: Index | None = None
    opened: int | None = None  # the index file's inode when it was opened: another (or none) means rebuild
    rebuilding: dict | None = None  # how far a rebuild is, while one runs
    wanted: bool = False  # a rebuild is due
    unique_bytes: int | None = None
    used: float = 0.0  # when its index was last synced (monotonic): the least recently used close first


def _record_previous(host_dir: HostDir, name: str) -> str | None:
    """The snapshot name's change record says it was made against (None: no usable record)."""
    try:
        found = records.read(host_dir.changes_file(name))
    except records.RecordRefused:
        return None
    return found[0] if found else None


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def _after(name: str, tail: Member) -> bool:
    """Whether snapshot name comes after the chain's tail (a snapshot, or a monthly copy standing in for one)."""
    if tail.name.startswith(copies.MONTHLY_PREFIX):
        return _time(name) >= tail.time
    return SnapshotName.parse(name) > SnapshotName.parse(tail.name)


def _time(name: str) -> int:
    parsed = SnapshotName.parse(name)
    return int(parsed.time.timestamp()) if parsed else 0


def _blocks(*paths: Path) -> int:
    total = 0
    for path in paths:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if st.st_nlink == 1 or not path.name.endswith(".manifest"):  # a linked manifest is its snapshot's
            total += st.st_blocks * 512
    return total


def _tree_of(host_dir: HostDir, name: str) -> Path:
    return (host_dir.monthly / name.removeprefix(copies.MONTHLY_PREFIX) if name.startswith(copies.MONTHLY_PREFIX)
            else host_dir.hourly / name)


class _Manifests:
    """Manifests' lines, read only when trees must be walked (a change record
    needs none); the newest is kept, as the next member's previous (a
    rebuild without records walks each tree beside the one before it)."""

    def __init__(self) -> None:
        self.kept: dict[Path, list[bytes] | None] = {}

    def lines(self, path: Path | None) -> list[bytes] | None:
        if path is None:
            return None
        if path not in self.kept:
            try:
                found = manifest.read_lines(path)
            except OSError:
                found = None
            self.kept = {**dict(list(self.kept.items())[-1:]), path: found}
        return self.kept[path]


def _record_of(planned: _Planned, previous: Member | None) -> list[records.Entry] | None:
    """The member's change record, if it has a readable one relative to previous."""
    if planned.changes is None:
        return None
    try:
        found = records.read(planned.changes)
    except records.RecordRefused as e:
        log.warning("versions.record_refused", error=str(e))
        return None
    return found[1] if found is not None and found[0] == (previous.name if previous else None) else None


def _add(index: Index, host_dir: HostDir, planned: _Planned, manifests: _Manifests) -> None:
    """Append planned to the index's chain: from its change record, else
    from the two trees (and their manifests)."""
    tail = index.tail()
    previous_tree = _tree_of(host_dir, tail.name) if tail else None
    if previous_tree is not None and not previous_tree.is_dir():
        raise IndexDamaged(f"the index's newest copy {tail.name} is gone: it cannot follow on from it")
    meta = [host_dir.meta_file(planned.name), host_dir.manifest_file(planned.name), host_dir.changes_file(planned.name)] \
        if not planned.name.startswith(copies.MONTHLY_PREFIX) else \
        [host_dir.monthly_record(planned.name.removeprefix(copies.MONTHLY_PREFIX))]

    def walked() -> list[records.Entry]:
        previous_lines = manifests.lines(copies_manifest(host_dir, tail.name)) if tail else None
        return between(planned.tree, manifests.lines(planned.manifest), previous_tree, previous_lines)

    recorded = _record_of(planned, tail)
    try:
        index.append(planned.name, planned.time, walked() if recorded is None else recorded, planned.tree, meta)
    except records.RecordRefused as e:
        if recorded is None:
            raise IndexDamaged(str(e)) from None
        log.warning("versions.record_refused", error=str(e))  # the record or the index is wrong: the trees decide
        try:
            index.append(planned.name, planned.time, walked(), planned.tree, meta)
        except records.RecordRefused as again:
            raise IndexDamaged(str(again)) from None


def copies_manifest(host_dir: HostDir, name: str) -> Path | None:
    if name.startswith(copies.MONTHLY_PREFIX):
        return copies.manifest_of(host_dir, copies.monthly(host_dir, name.removeprefix(copies.MONTHLY_PREFIX)))
    return host_dir.manifest_file(name)


_origins: dict[tuple[Path, int], str | None] = {}  # (a monthly copy, its inode) → the snapshot it was found to be


def _origin_by_inodes(host_dir: HostDir, month: str, snapshots: list[str]) -> str | None:
    """The snapshot a monthly copy made before bkd recorded it is a copy of,
    as well as can be told: of the snapshots whose files are the copy's
    inodes (for a sample of them), the one nearest its month's start (a
    monthly copy is made of the newest snapshot when its day comes)."""
    tree = host_dir.monthly / month
    try:
        key = (tree, os.lstat(tree).st_ino)
    except OSError:
        return None
    if key in _origins:
        return _origins[key]
    sample: list[tuple[bytes, int]] = []
    stack = [b""]
    while stack and len(sample) < SAMPLE:
        prefix = stack.pop(0)  # breadth first: files from all over the tree
        try:
            with os.scandir(os.path.join(tree, os.fsdecode(prefix)) if prefix else tree) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(prefix + os.fsencode(entry.name) + b"/")
                    elif entry.is_file(follow_symlinks=False) and len(sample) < SAMPLE:
                        sample.append((prefix + os.fsencode(entry.name), entry.inode()))
        except OSError:
            continue
    matching = []
    for name in snapshots if sample else []:
        try:
            if all(os.lstat(host_dir.hourly / name / os.fsdecode(path)).st_ino == ino for path, ino in sample):
                matching.append(name)
        except OSError:
            continue
    start = datetime.strptime(month, "%Y-%m").replace(tzinfo=timezone.utc).timestamp()
    found = min(matching, key=lambda name: abs(_time(name) - start), default=None)
    _origins[key] = found
    return found


def _plan(host_dir: HostDir) -> list[_Planned]:
    """The chain to build from what the host's directory holds: its
    snapshots, and each monthly copy whose snapshot is not kept (it holds
    that snapshot's inodes, so it stands where that snapshot stood)."""
    snapshots = [str(n) for n in host_dir.snapshots()]
    kept = set(snapshots)
    planned = [_Planned(n, _time(n), host_dir.hourly / n, host_dir.manifest_file(n),
                        host_dir.changes_file(n) if host_dir.changes_file(n).exists() else None) for n in snapshots]
    for copy in copies.monthly_copies(host_dir):
        origin = copy.snapshot or _origin_by_inodes(host_dir, copy.ref.removeprefix(copies.MONTHLY_PREFIX), snapshots)
        if origin not in kept:
            planned.append(_Planned(copy.ref, int(copy.time.timestamp()), copy.path, copies.manifest_of(host_dir, copy),
                                    None))
    return sorted(planned, key=lambda p: (p.time, p.name.startswith(copies.MONTHLY_PREFIX), p.name))


def sync(index: Index, host_dir: HostDir) -> int:
    """Bring index in line with the host's directory (see the module's
    docstring); IndexDamaged when only a rebuild can. Returns how many
    snapshots were added."""
    members = index.members()
    by_name = {m.name: m for m in members}
    snapshots = [str(n) for n in host_dir.snapshots()]
    new = [n for n in snapshots if n not in by_name]
    tail = members[-1] if members else None
    if new and tail is not None and not _after(new[0], tail):
        # A snapshot named before the newest. Made after it (a clock that stepped back), its change
        # record says so: it is indexed in the order snapshots are made in. Else (put there some other
        # way) only a rebuild, in the order of their names, can place it.
        record = _record_previous(host_dir, new[0])
        if len(new) > 1 or record != tail.name:
            raise IndexDamaged(f"snapshot {new[0]} is older than the index's newest, {tail.name}")
        log.warning("versions.out_of_order", snapshot=new[0], newest=tail.name)
    manifests = _Manifests()
    for name in new:
        changes = host_dir.changes_file(name)
        planned = _Planned(name, _time(name), host_dir.hourly / name, host_dir.manifest_file(name),
                           changes if changes.exists() else None)
        _add(index, host_dir, planned, manifests)
        by_name[name] = index.tail()
    index.set_holders(holders_of(index, host_dir, by_name, snapshots))
    return len(new)


def holders_of(index: Index, host_dir: HostDir, by_name: dict[str, Member], snapshots: list[str]) -> list[Holder]:
    """The host's kept copies, each with the chain member it holds."""
    holders = []
    for name in snapshots:
        member = by_name[name]
        holders.append(Holder(name, HOURLY, member.seq, member.dir_bytes + member.meta_bytes))
    for copy in copies.monthly_copies(host_dir):
        month = copy.ref.removeprefix(copies.MONTHLY_PREFIX)
        member = by_name.get(copy.ref) or by_name.get(copy.snapshot or "")
        if member is None and copy.snapshot is None:
            member = by_name.get(_origin_by_inodes(host_dir, month, snapshots) or "")
        if member is None:
            raise IndexDamaged(f"{copy.ref} holds a snapshot the index never had")
        holders.append(Holder(copy.ref, MONTHLY, member.seq,
                              member.dir_bytes + _blocks(host_dir.monthly_record(month), host_dir.monthly_manifest(month))))
    for copy in copies.archives(host_dir):
        member = by_name.get(copy.snapshot)
        if member is not None:  # one of a snapshot pruned before the index was built holds nothing it knows
            archive = copy.archive
            holders.append(Holder(copy.ref, ARCHIVE, member.seq, _blocks(archive.path, *archive.sidecars())))
    return holders


def build(path: Path, host_dir: HostDir, progress: dict, stop: threading.Event) -> Index:
    """A new index of the host at path, from its kept copies (see _plan)."""
    for leftover in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        leftover.unlink(missing_ok=True)
    index = Index.create(path)
    try:
        planned = _plan(host_dir)
        progress.update(total=len(planned), done=0)
        manifests = _Manifests()
        for member in planned:
            if stop.is_set():
                raise Cancelled()
            _add(index, host_dir, member, manifests)
            progress["done"] += 1
        sync(index, host_dir)
        index.mark_complete()
        index.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except BaseException:
        index.close()
        raise
    return index


def _open_or_start(path: Path, host_dir: HostDir) -> Index | None:
    """The host's index; a new one for a host with at most one copy so far
    (its first snapshot is indexed at once); None when one must be rebuilt."""
    index = Index.open(path)
    if index is not None or len(host_dir.snapshots()) + len(host_dir.monthly_copies()) > 1:
        return index
    index = Index.create(path)
    index.mark_complete()  # an empty chain is whole: sync adds the first snapshot
    return index


class Versions:
    """Every host's version index (one SQLite file per host under
    state_dir/versions/), kept in line with the host's copies."""

    def __init__(self, state_dir: Path, backup_root: Callable[[], Path], hosts: Callable[[], list[str]]):
        self.directory = state_dir / "versions"
        self.backup_root = backup_root  # the live config's, at each use
        self.host_names = hosts  # the configured hosts: indexed at start
        self.hosts: dict[str, _Host] = {}
        self.wake = asyncio.Event()
        self.stop = threading.Event()
        self.marker = self.directory / ".open"  # the boot the indexes were opened in (see the docstring)
        self.marked = threading.Lock()
        self.open_in: str | None = None  # this boot's id, once the marker is written

    def _mark_open(self) -> None:
        """Before an index is opened or made (in a worker thread): indexes a
        previous boot left open are discarded, then this boot is marked."""
        self.directory.mkdir(mode=0o700, exist_ok=True)  # again each time: it may have been removed
        with self.marked:
            if self.open_in is not None and self.marker.exists():  # (gone with a directory removed by hand)
                return
            boot = _boot()
            try:
                left = self.marker.read_text().strip()
            except FileNotFoundError:
                left = None
            if left is not None and left != boot:
                discarded = sorted(self.directory.glob("*.sqlite*"))
                log.warning("versions.unclean_stop", indexes=len(discarded),
                            reason="the system went down while indexes were open: they are rebuilt")
                for path in discarded:
                    path.unlink(missing_ok=True)
            write_atomic(self.marker, boot.encode() + b"\n")
            self.open_in = boot

    def _host(self, name: str) -> _Host:
        return self.hosts.setdefault(name, _Host())

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}.sqlite"

    def unique_bytes(self, name: str) -> int | None:
        """A host's unique bytes as of its index's last sync (None before one)."""
        host = self.hosts.get(name)
        return host.unique_bytes if host else None

    def _want_rebuild(self, name: str, why: str) -> None:
        host = self._host(name)
        if not host.wanted and host.rebuilding is None:
            log.warning("versions.rebuild_due", host=name, reason=why)
        host.wanted = True
        if host.index is not None:
            host.index.close()
            host.index = None
        self.wake.set()

    async def _synced(self, host_dir: HostDir) -> tuple[_Host, float] | None:
        """Open and sync the host's index (under its lock); None while it
        cannot be used (a rebuild is due or running)."""
        name = host_dir.root.name
        host = self._host(name)
        if host.rebuilding is not None or host.wanted:
            return None
        started = time.monotonic()
        try:
            if host.index is not None and _inode(self._path(name)) != host.opened:
                self._want_rebuild(name, "its file was removed or replaced")
                return None
            if host.index is None:
                await asyncio.to_thread(self._mark_open)
                host.index = await asyncio.to_thread(_open_or_start, self._path(name), host_dir)
                if host.index is None:
                    self._want_rebuild(name, "no index yet")
                    return None
                host.opened = _inode(self._path(name))
                self._close_idle()
            host.used = time.monotonic()
            await asyncio.to_thread(sync, host.index, host_dir)
            host.unique_bytes = await asyncio.to_thread(host.index.unique_bytes)
        except IndexDamaged as e:
            self._want_rebuild(name, str(e))
            return None
        except Exception as e:  # a database error, a tree that cannot be read: the index is rebuilt
            log.exception("versions.sync_failed", host=name)
            self._want_rebuild(name, str(e) or type(e).__name__)
            return None
        return host, time.monotonic() - started

    def _close_idle(self) -> None:
        """Close the least recently used indexes beyond OPEN_AT_MOST (an
        idle daemon with a hundred hosts does not keep a hundred connections
        and their caches); one in use (its host's lock held) stays open."""
        open_now = [(host.used, host) for host in self.hosts.values() if host.index is not None]
        idle = sorted((entry for entry in open_now if not entry[1].lock.locked()), key=lambda entry: entry[0])
        for _, host in idle[:max(0, len(open_now) - OPEN_AT_MOST)]:
            host.index.close()
            host.index = None

    async def added(self, host_dir: HostDir) -> float | None:
        """A snapshot was made: index it (the run's `index_s`); None while the index is being rebuilt."""
        async with self._host(host_dir.root.name).lock:
            synced = await self._synced(host_dir)
        return round(synced[1], 3) if synced else None

    async def changed(self, host_dir: HostDir) -> None:
        """Copies were pruned, expired or made: the index follows."""
        async with self._host(host_dir.root.name).lock:
            await self._synced(host_dir)

    async def _ready(self, host_dir: HostDir, work):
        """work(index) on a worker thread once the index is in line; NotReady
        (with how far the rebuild is) while it cannot answer."""
        name = host_dir.root.name
        host = self._host(name)
        async with host.lock:
            synced = await self._synced(host_dir)
            if synced is None:
                progress = host.rebuilding or {"done": 0, "total": None}
                raise NotReady(f"the version index of {name} is being rebuilt "
                               f"({progress['done']} of {progress['total'] or '?'} copies so far); try again later",
                               {"host": name, "rebuilding": True, **progress})
            return await asyncio.to_thread(work, host.index)

    async def find(self, host_dir: HostDir, pattern: str | None, path: str | None, since: datetime | None,
                   limit: int) -> tuple[list, bool]:
        """Every version of the paths pattern matches, or of exactly path (see index.Index.find)."""
        compiled = compile_pattern(pattern) if pattern is not None else exactly(path)
        cutoff = int(since.timestamp()) if since else None
        versions, truncated = await self._ready(host_dir, lambda index: index.find(compiled, cutoff, limit))
        for version in versions:
            version["mtime"] = clock.iso(datetime.fromtimestamp(version.pop("mtime_ns") / 1e9, timezone.utc))
        return versions, truncated

    async def space(self, host_dir: HostDir, per_copy: bool) -> dict:
        return await self._ready(host_dir, lambda index: index.space(per_copy))

    async def freed(self, host_dir: HostDir, names: list[str]) -> int | None:
        """What deleting these copies of the host together would free; None while the index cannot say."""
        def work(index: Index) -> int:
            holders = index.holders()
            return index.freed([h for h in holders if h.name in set(names)], holders)
        try:
            return await self._ready(host_dir, work)
        except NotReady:
            return None

    async def check(self, host_dir: HostDir, names: list[str]) -> dict:
        """The index against the manifests of the named snapshots: each one's
        regular files, as the index has them, are its manifest's."""
        def work(index: Index) -> dict:
            members = {m.name: m for m in index.members()}
            problems = []
            for name in names:
                try:
                    recorded = manifest.read(host_dir.manifest_file(name))
                except manifest.ManifestRefused:
                    continue  # verify reports the manifest itself
                if name not in members or recorded is None:
                    continue
                have = index.regular_files(members[name].seq)
                for path in sorted(have.keys() | recorded.keys()):
                    if have.get(path) != recorded.get(path):
                        problems.append({"snapshot": name, "path": os.fsdecode(path),
                                         "problem": "not in the index" if path not in have else
                                         "not in the manifest" if path not in recorded else "differs"})
            return {"checked": len(names), "problems": problems}
        try:
            result = await self._ready(host_dir, work)
        except NotReady as e:
            return {"checked": 0, "problems": [], "not_ready": e.message}
        if result["problems"]:
            self._want_rebuild(host_dir.root.name, f"verify found {len(result['problems'])} differences")
        return result

    # ---- the rebuilds: a supervised loop -----------------------------------------------

    async def run(self) -> None:
        """At start, every configured host's index is opened and synced (or
        its rebuild is due); then each rebuild runs as it comes due."""
        backup_root = self.backup_root()
        for name in self.host_names():
            await self.changed(HostDir.of(backup_root, name))
        while True:
            self.wake.clear()
            for name, host in list(self.hosts.items()):
                if host.wanted:
                    await self._rebuild(HostDir.of(self.backup_root(), name))
            await woken(self.wake, 3600)

    async def _rebuild(self, host_dir: HostDir) -> None:
        name = host_dir.root.name
        host = self._host(name)
        if not host_dir.root.is_dir():
            host.wanted = False
            return
        host.rebuilding = {"done": 0, "total": None, "started": clock.iso(clock.now())}
        host.wanted = False
        building = self._path(name).with_name(f"{name}.sqlite.building")
        started = time.monotonic()
        log.info("versions.rebuild_start", host=name)
        try:
            await asyncio.to_thread(self._mark_open)  # a full disk fails this rebuild, not the loop
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    index = await in_own_thread(build, building, host_dir, host.rebuilding, self.stop)
                    break
                except (OSError, IndexDamaged) as e:  # a tree pruned while it was read
                    log.warning("versions.rebuild_retry", host=name, attempt=attempt, error=str(e))
                    if attempt == ATTEMPTS:
                        raise
            async with host.lock:
                await asyncio.to_thread(sync, index, host_dir)  # what came meanwhile
                index.close()
                final = self._path(name)
                for stale in (final.with_name(final.name + "-wal"), final.with_name(final.name + "-shm")):
                    stale.unlink(missing_ok=True)
                os.replace(building, final)
                host.index = await asyncio.to_thread(Index.open, final)
                host.opened = _inode(final)
                host.used = time.monotonic()
                self._close_idle()
                host.unique_bytes = await asyncio.to_thread(host.index.unique_bytes)
                size = host.index.size_on_disk()
            log.info("versions.rebuilt", host=name, copies=host.rebuilding["total"],
                     seconds=round(time.monotonic() - started, 1), bytes=size)
        except Cancelled:
            raise asyncio.CancelledError() from None
        except Exception as e:
            log.error("versions.rebuild_failed", host=name, error=str(e) or type(e).__name__)
            host.wanted = False  # tried again when it is next asked for
        finally:
            host.rebuilding = None

    def close(self) -> None:
        """At the daemon's stop: every index closed and flushed, then the marker removed."""
        self.stop.set()
        for host in self.hosts.values():
            if host.index is not None:
                host.index.close()
                host.index = None
        with self.marked:
            if self.open_in is None:
                return
            try:
                for index_file in self.directory.glob("*.sqlite"):  # closed: SQLite has written them whole
                    fsync_file(index_file)
                fsync_dir(self.directory)  # and the renames of rebuilt ones
                self.marker.unlink(missing_ok=True)
                fsync_dir(self.directory)
            except OSError as e:  # the marker stays: after a reboot the indexes are rebuilt, nothing is lost
                log.warning("versions.flush_failed", error=str(e))
            self.open_in = None

