"""The on-disk layout of one host under the backup root (SPEC §4): where
each thing lives, and the names bkd recognises there (snapshots, archives,
monthly copies); anything else is never touched."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

from bkctl.protocol import SNAPSHOT_NAME

TIME_FORMAT = "%Y-%m-%d_%H%M%S"
SNAPSHOT = re.compile(SNAPSHOT_NAME)
_ARCHIVE_NAME = re.compile(rf"(?P<host>.+)_(?P<snapshot>{SNAPSHOT_NAME})\.tar\.(?:gz|zst)")
MONTH_NAME = re.compile(r"(\d{4})-(\d{2})")
PARTIAL_PREFIX = ".partial-"
STATE_COPY = ".bkd-state"  # {backup_root}/.bkd-state/: a consistent copy of the state database (replicas pull it)
UPSTREAMS = ".bkd-upstreams"  # {backup_root}/.bkd-upstreams/{replica}/state/: on a replica, its primaries' copies


def state_copy_dir(backup_root: Path) -> Path:
    return backup_root / STATE_COPY


def upstream_state_dir(backup_root: Path, replica: str) -> Path:
    """Where a replica keeps the generations of its primary's state database."""
    return backup_root / UPSTREAMS / replica / "state"


def replicated_dirs(backup_root: Path, replica: str) -> list[str]:
    """The primary's host names of the host directories a replica has here
    ({replica}.{host}/), whatever the primary has now."""
    prefix = f"{replica}."
    try:
        entries = list(os.scandir(backup_root))
    except FileNotFoundError:
        return []
    return sorted(e.name[len(prefix):] for e in entries
                  if e.name.startswith(prefix) and len(e.name) > len(prefix) and e.is_dir(follow_symlinks=False))


class SnapshotName(NamedTuple):
    """A complete snapshot's directory name: UTC time plus a sequence number
    (1 for the bare name, 2.. for -2, -3, … within the same second). A tuple,
    so that sorting thousands of them compares in C."""

    time: datetime
    seq: int = 1

    @classmethod
    def parse(cls, name: str) -> "SnapshotName | None":
        match = SNAPSHOT.fullmatch(name)
        if not match:
            return None
        try:  # not strptime: this runs for every name on every listing
            time = datetime(*map(int, match.groups()[:6]), tzinfo=timezone.utc)
        except ValueError:
            return None
        return cls(time, int(match[7] or 1))

    def __str__(self) -> str:
        base = self.time.strftime(TIME_FORMAT)
        return base if self.seq == 1 else f"{base}-{self.seq}"


def month_name(time: datetime) -> str:
    """The name of the monthly copy of time's month: YYYY-MM."""
    return f"{time.year:04d}-{time.month:02d}"


def sidecar(archive: Path, suffix: str) -> Path:
    """A file bkd keeps beside an archive: its checksum (.sha256), index (.index), manifest (.manifest)."""
    return archive.with_name(archive.name + suffix)


@dataclass(frozen=True)
class ArchiveFile:
    snapshot: SnapshotName
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def index(self) -> Path:
        """Its entries, for browsing and restoring without decompressing it whole (tree/archiveindex.py)."""
        return sidecar(self.path, ".index")

    @property
    def manifest(self) -> Path:
        """The manifest of the snapshot it was made from, linked when it was made: verify reads it
        after that snapshot is pruned."""
        return sidecar(self.path, ".manifest")

    @property
    def checksum(self) -> Path:
        return sidecar(self.path, ".sha256")

    def sidecars(self) -> tuple[Path, ...]:
        return self.checksum, self.index, self.manifest


@dataclass(frozen=True)
class HostDir:
    root: Path  # {backup_root}/{host}

    @classmethod
    def of(cls, backup_root: Path, host: str) -> HostDir:
        return cls(backup_root / host)

    @property
    def hourly(self) -> Path:
        return self.root / "hourly"

    @property
    def latest(self) -> Path:
        return self.root / "latest"

    @property
    def meta(self) -> Path:
        return self.root / "meta"

    @property
    def archives(self) -> Path:
        return self.root / "archives"

    @property
    def monthly(self) -> Path:
        return self.root / "monthly"

    @property
    def trash(self) -> Path:
        """Pruned snapshots wait here (renamed in atomically) until deleted in the background."""
        return self.root / ".trash"

    @property
    def restoring(self) -> Path:
        """Private staging directories of restores from archives (restore/source.py)."""
        return self.root / ".restore"

    @property
    def damage_file(self) -> Path:
        """The damaged copies and other problems verify found (pipeline/damage.py)."""
        return self.meta / "damage.json"

    @property
    def hold_file(self) -> Path:
        """The host's unreleased anomalies and its prune hold (tree/holds.py)."""
        return self.meta / "hold.json"

    @property
    def upstream_file(self) -> Path:
        """On a replica: what the last pull saw of the primary (tree/upstream.py)."""
        return self.meta / "upstream.json"

    def meta_file(self, name: SnapshotName | str) -> Path:
        return self.meta / f"{name}.json"

    def changes_file(self, name: SnapshotName | str) -> Path:
        """What changed in the snapshot against the one before it (pipeline/changes.py)."""
        return self.meta / f"{name}.changes"

    def manifest_file(self, name: SnapshotName | str) -> Path:
        return self.meta / f"{name}.manifest"

    def monthly_record(self, month: str) -> Path:
        """Which snapshot the monthly copy of month was made from (JSON)."""
        return self.meta / f"monthly-{month}.json"

    def monthly_manifest(self, month: str) -> Path:
        """That snapshot's manifest, linked when the copy was made: it outlives the snapshot."""
        return self.meta / f"monthly-{month}.manifest"

    def archive_file(self, name: str) -> ArchiveFile | None:
        """The complete archive of that file name, if there is one."""
        match = _ARCHIVE_NAME.fullmatch(name)
        snapshot = SnapshotName.parse(match["snapshot"]) if match and match["host"] == self.root.name else None
        path = self.archives / name
        return ArchiveFile(snapshot, path) if snapshot and path.is_file() and not path.is_symlink() else None

    def hourly_names(self) -> list[str]:
        """Every directory name in hourly/ except staging ones, recognised or not."""
        try:
            entries = list(os.scandir(self.hourly))
        except FileNotFoundError:
            return []
        return [e.name for e in entries
                if e.is_dir(follow_symlinks=False) and not e.name.startswith(PARTIAL_PREFIX)]

    def snapshots(self) -> list[SnapshotName]:
        """Complete snapshots, oldest first. Anything else in hourly/ is ignored."""
        return sorted(n for n in map(SnapshotName.parse, self.hourly_names()) if n)

    def archive_files(self) -> list[ArchiveFile]:
        """This host's complete archives, oldest first."""
        try:
            entries = list(os.scandir(self.archives))
        except FileNotFoundError:
            return []
        found = []
        for entry in entries:
            match = _ARCHIVE_NAME.fullmatch(entry.name)
            snapshot = SnapshotName.parse(match["snapshot"]) if match and match["host"] == self.root.name else None
            if snapshot and entry.is_file(follow_symlinks=False):
                found.append(ArchiveFile(snapshot, Path(entry.path)))
        return sorted(found, key=lambda a: a.snapshot)

    def monthly_copies(self) -> list[str]:
        """The names of this host's monthly copies, oldest first."""
        try:
            return sorted(e.name for e in os.scandir(self.monthly)
                          if MONTH_NAME.fullmatch(e.name) and e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            return []

    def latest_snapshot(self) -> SnapshotName | None:
        """What `latest` points at, if it is a complete snapshot; else the newest by name."""
        try:
            target = os.readlink(self.latest)
        except OSError:
            target = ""
        parent, _, leaf = target.rpartition("/")
        name = SnapshotName.parse(leaf) if parent == "hourly" else None
        if name and (self.hourly / str(name)).is_dir():
            return name
        snapshots = self.snapshots()
        return snapshots[-1] if snapshots else None

    def partials(self) -> list[Path]:
        """Staging directories left by interrupted runs, newest first."""
        try:
            entries = [e for e in os.scandir(self.hourly) if e.name.startswith(PARTIAL_PREFIX)]
        except FileNotFoundError:
            return []
        return [Path(e.path) for e in sorted(entries, key=lambda e: e.name, reverse=True)
                if e.is_dir(follow_symlinks=False)]

    def free_name(self, time: datetime) -> SnapshotName:
        """A name for a snapshot taken at time that sorts after every snapshot
        of that second: when a prune took the bare name of an earlier pair and
        left its -2, reusing the bare name would put the new snapshot before
        the older one (retention would take the older for the newest)."""
        second = time.astimezone(timezone.utc).replace(microsecond=0)
        taken = [name.seq for name in self.snapshots() if name.time == second]
        name = SnapshotName(second, max(taken) + 1 if taken else 1)
        while (self.hourly / str(name)).exists():  # anything else of that name: never replaced
            name = SnapshotName(name.time, name.seq + 1)
        return name
