"""What a host's directory holds (its facts): the newest complete snapshot
not dated in the future, entries dated in the future, archives, monthly
copies. Read after every change bkd makes and by the freshness loop; a
directory whose mtime has not moved is not listed again. A directory that
cannot be read gives facts with an `error`."""

from __future__ import annotations

import bisect
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from . import holds, upstream as upstream_record
from .layout import ArchiveFile, HostDir, SnapshotName


@dataclass(frozen=True)
class HostFacts:
    latest: SnapshotName | None = None  # newest complete snapshot not dated in the future
    snapshots: int = 0
    future: tuple[str, ...] = ()  # snapshots and archives dated in the future (a clock step)
    newest_archive: SnapshotName | None = None  # snapshot of the newest archive not dated in the future
    archives: int = 0
    monthly: tuple[str, ...] = ()
    error: str | None = None  # the directory could not be read
    held: bool = False  # pruning is held after an anomaly (tree/holds.py)
    suspects: tuple[str, ...] = ()  # unreleased suspect snapshots
    upstream: upstream_record.Upstream | None = None  # a replicated host: what its last pull saw of the primary


@dataclass(frozen=True)
class _Listing:
    """What a host's directories held when last read. Snapshots are kept as
    plain tuples of strings and floats, which the garbage collector stops
    tracking: 100,000 long-lived SnapshotNames made each full collection
    (every few hundred calls) pause the daemon for 50 ms."""

    stamp: tuple[int | None, ...]  # mtime_ns of hourly/, archives/ and monthly/ (None: missing)
    names: tuple[str, ...]  # complete snapshots, oldest first
    times: tuple[float, ...]  # their times (Unix seconds)
    archives: list[ArchiveFile]
    monthly: tuple[str, ...]


# By host directory. The freshness loop re-reads every host every minute;
# with a thousand snapshots each that was most of an idle daemon's CPU and a
# burst that slowed every call made during it. A directory whose mtime has not
# moved holds the same entries, so its listing is reused.
_listings: dict[Path, _Listing] = {}
# A directory changed this recently may change again within the same mtime
# tick, unseen: more than the coarsest timestamps a backup root may have (2 s).
RACY_NS = 3_000_000_000


def _stamp(host_dir: HostDir) -> tuple[int | None, ...]:
    stamp = []
    for directory in (host_dir.hourly, host_dir.archives, host_dir.monthly):
        try:
            stamp.append(os.stat(directory).st_mtime_ns)
        except FileNotFoundError:
            stamp.append(None)
    return tuple(stamp)


def _listing(host_dir: HostDir) -> _Listing:
    started = time.time_ns()
    stamp = _stamp(host_dir)
    cached = _listings.get(host_dir.root)
    if cached is not None and cached.stamp == stamp:
        return cached
    snapshots = host_dir.snapshots()
    listing = _Listing(stamp, tuple(map(str, snapshots)), tuple(s.time.timestamp() for s in snapshots),
                       host_dir.archive_files(), tuple(host_dir.monthly_copies()))
    if all(mtime is None or mtime < started - RACY_NS for mtime in stamp):
        _listings[host_dir.root] = listing
    else:  # a change in the same tick would leave the mtime as it is: read again next time
        _listings.pop(host_dir.root, None)
    return listing


def read_facts(host_dir: HostDir, now: datetime) -> HostFacts:
    try:
        listing = _listing(host_dir)
    except OSError as e:
        where = os.fsdecode(e.filename) if e.filename else str(host_dir.root)
        return HostFacts(error=f"cannot read {where}: {e.strerror or e}")
    names, archives = listing.names, listing.archives
    split = bisect.bisect_right(listing.times, now.timestamp())  # sorted: the past, then the future
    past_archives = [a for a in archives if a.snapshot.time <= now]
    future = names[split:] + tuple(a.path.name for a in archives if a.snapshot.time > now)
    hold = holds.read(host_dir)
    return HostFacts(latest=SnapshotName.parse(names[split - 1]) if split else None, snapshots=len(names),
                     future=future, newest_archive=past_archives[-1].snapshot if past_archives else None,
                     archives=len(archives), monthly=listing.monthly, held=bool(hold and hold.held),
                     suspects=tuple(hold.snapshots) if hold else (), upstream=upstream_record.read(host_dir))
