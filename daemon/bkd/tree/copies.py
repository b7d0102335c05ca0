"""Every copy bkd keeps of a host, by the name bkctl gives it (SPEC §2):
`latest` or an hourly snapshot's name, a monthly copy `monthly/YYYY-MM`, an
archive `archive/FILE` — each can be listed, browsed, restored and verified.

A monthly copy is a hardlinked copy of one snapshot; an archive a tar of
one. Which snapshot is recorded when the copy is made (a monthly copy's
`meta/monthly-YYYY-MM.json`, an archive's own name), with that snapshot's
manifest linked beside it, so that verify still knows what the copy must
hold once the snapshot is pruned."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..infra.errors import NotFound
from . import browse
from .archiveindex import ArchiveTree
from .layout import MONTH_NAME, ArchiveFile, HostDir, SnapshotName

HOURLY, MONTHLY, ARCHIVE = "hourly", "monthly", "archive"
KINDS = (HOURLY, MONTHLY, ARCHIVE)
MONTHLY_PREFIX, ARCHIVE_PREFIX = "monthly/", "archive/"


@dataclass(frozen=True)
class Copy:
    kind: str  # hourly | monthly | archive
    ref: str  # how bkctl names it: 2026-12-07_131509, monthly/2026-12, archive/web1_2026-12-07_131509.tar.zst
    path: Path  # its directory, or the archive file
    snapshot: str | None  # the snapshot it holds (an hourly one: its own name); None: not recorded

    @property
    def time(self) -> datetime:
        """When its content was taken: its snapshot's time (a monthly copy of
        unknown origin: the first instant of its month)."""
        name = SnapshotName.parse(self.snapshot) if self.snapshot else None
        if name:
            return name.time
        year, month = self.ref.removeprefix(MONTHLY_PREFIX).split("-")
        return datetime(int(year), int(month), 1, tzinfo=timezone.utc)

    @property
    def archive(self) -> ArchiveFile:
        assert self.kind == ARCHIVE
        return ArchiveFile(SnapshotName.parse(self.snapshot), self.path)


def hourly(host_dir: HostDir, name: SnapshotName | str) -> Copy:
    return Copy(HOURLY, str(name), host_dir.hourly / str(name), str(name))


def monthly(host_dir: HostDir, month: str) -> Copy:
    return Copy(MONTHLY, MONTHLY_PREFIX + month, host_dir.monthly / month, monthly_origin(host_dir, month))


def archived(archive: ArchiveFile) -> Copy:
    return Copy(ARCHIVE, ARCHIVE_PREFIX + archive.name, archive.path, str(archive.snapshot))


def monthly_origin(host_dir: HostDir, month: str) -> str | None:
    """The snapshot the monthly copy was made from, as recorded when it was made."""
    try:
        record = json.loads(host_dir.monthly_record(month).read_bytes())
    except (OSError, ValueError):
        return None
    name = record.get("snapshot") if isinstance(record, dict) else None
    return name if isinstance(name, str) and SnapshotName.parse(name) else None


def _is_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def resolve(host_dir: HostDir, ref: str | None) -> Copy:
    """The copy a SNAPSHOT argument names (default: latest), or NotFound."""
    host = host_dir.root.name
    if ref in (None, "", "latest"):
        name = host_dir.latest_snapshot()
        if name is None:
            raise NotFound(f"{host} has no snapshot yet")
        return hourly(host_dir, name)
    if ref.startswith(MONTHLY_PREFIX):
        month = ref.removeprefix(MONTHLY_PREFIX)
        if MONTH_NAME.fullmatch(month) and _is_dir(host_dir.monthly / month):
            return monthly(host_dir, month)
        raise NotFound(f"{host} has no monthly copy {month!r} (bkctl snapshots {host} --kind monthly lists them)")
    if ref.startswith(ARCHIVE_PREFIX):
        archive = host_dir.archive_file(ref.removeprefix(ARCHIVE_PREFIX))
        if archive is None:
            raise NotFound(f"{host} has no archive {ref.removeprefix(ARCHIVE_PREFIX)!r} "
                           f"(bkctl snapshots {host} --kind archive lists them)")
        return archived(archive)
    name = SnapshotName.parse(ref)
    if name is None or not _is_dir(host_dir.hourly / ref):
        raise NotFound(f"{host} has no snapshot {ref!r}")
    return hourly(host_dir, name)


def monthly_copies(host_dir: HostDir) -> list[Copy]:
    return [monthly(host_dir, month) for month in host_dir.monthly_copies()]


def archives(host_dir: HostDir) -> list[Copy]:
    return [archived(a) for a in host_dir.archive_files()]


def manifest_of(host_dir: HostDir, copy: Copy) -> Path | None:
    """The manifest a copy is checked against: its snapshot's, linked beside
    a monthly copy or an archive when it was made (older ones: the
    snapshot's own, while it is kept)."""
    linked = {MONTHLY: lambda: host_dir.monthly_manifest(copy.ref.removeprefix(MONTHLY_PREFIX)),
              ARCHIVE: lambda: copy.archive.manifest}.get(copy.kind)
    if linked is not None and linked().exists():
        return linked()
    return host_dir.manifest_file(copy.snapshot) if copy.snapshot else None


def directory_tree(copy: Copy):
    """browse's functions bound to a copy that is a directory (hourly, monthly)."""
    return _Directory(copy.path)


class _Directory:
    def __init__(self, root: Path):
        self.root = root

    def lookup(self, path: str) -> dict:
        return browse.lookup(self.root, path)

    def list_dir(self, path: str, offset: int = 0, limit: int = browse.DEFAULT_PAGE) -> dict:
        return browse.list_dir(self.root, path, offset, limit)

    def top_level(self) -> list[bytes]:
        return browse.top_level(self.root)


Tree = _Directory | ArchiveTree
