"""Listing a host's snapshots: the filesystem says which exist, the database
caches their statistics, and each snapshot's meta/ record is the source the
cache is rebuilt from (in one transaction, however many are missing)."""

from __future__ import annotations

import asyncio
import bisect
import json
from datetime import datetime

import structlog

from ..config.models import Retention
from ..infra import clock
from ..infra.errors import InvalidArgument
from ..pipeline.prune import host_plan
from ..pipeline.retention import Decision
from ..state.store import STORE_ERRORS, Store
from ..tree import archiveindex, copies
from ..tree.layout import HostDir, SnapshotName

log = structlog.get_logger()


def read_meta(host_dir: HostDir, name: SnapshotName | str) -> dict:
    try:
        record = json.loads(host_dir.meta_file(name).read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in record.items() if k not in ("name", "time")} if isinstance(record, dict) else {}


def is_suspect(host_dir: HostDir, name: str) -> bool:
    """Whether the snapshot's own record says it is suspect (an anomaly)."""
    verdict = read_meta(host_dir, name).get("anomaly")
    return bool(isinstance(verdict, dict) and verdict.get("suspect"))


def _listing(host_dir: HostDir, policy: Retention, now: datetime) -> list[Decision]:
    """Every complete snapshot of the host, oldest first, with its retention
    tier: one read of hourly/, in a worker thread (the retention plan of a
    thousand snapshots takes milliseconds the event loop should spend
    answering others)."""
    return [d for d in host_plan(host_dir, policy, now) if d.tier != "unknown"]  # unknown: not a snapshot name


async def list_snapshots(store: Store, host_dir: HostDir, policy: Retention, limit: int | None,
                         before: str | None) -> dict:
    """The newest `limit` complete snapshots older than `before` (all when no
    limit), oldest first, with `next_before` to ask for the page before them."""
    host = host_dir.root.name
    parsed = None if before is None else SnapshotName.parse(before)
    if before is not None and parsed is None:
        raise InvalidArgument(f"invalid params: before: {before!r} is not a snapshot name")
    listing = await asyncio.to_thread(_listing, host_dir, policy, clock.now())
    end = len(listing) if parsed is None else \
        bisect.bisect_left(listing, parsed, key=lambda d: SnapshotName.parse(d.snapshot))
    start = max(0, end - limit) if limit else 0
    page = listing[start:end]
    names = [d.snapshot for d in page]
    try:
        recorded = await store.snapshots.stats_between(host, names[0], names[-1]) if page else {}
    except STORE_ERRORS as e:
        log.warning("store.read_failed", host=host, error=str(e))
        recorded = None
    missing = [name for name in names if recorded is None or name not in recorded]
    if missing:  # the database lost them (restored, rebuilt): meta/ is the source
        found = await asyncio.to_thread(lambda: {n: read_meta(host_dir, n) for n in missing})
        if recorded is not None:
            try:
                await store.snapshots.record(host, [(name, clock.iso(SnapshotName.parse(name).time), stats, None)
                                                    for name, stats in found.items()])
            except STORE_ERRORS as e:
                log.warning("store.write_failed", host=host, error=str(e))
        recorded = {**(recorded or {}), **found}
    entries = []
    for decision in page:
        name = decision.snapshot
        stats = recorded.get(name, {})
        verdict = stats.get("anomaly")
        entries.append({
            "name": name, "time": clock.iso(SnapshotName.parse(name).time), "tier": decision.tier,
            "files": stats.get("files"), "bytes": stats.get("bytes"),
            "changed_files": stats.get("changed_files"), "deleted_files": stats.get("deleted_files"),
            "transferred_bytes": stats.get("transferred_bytes"), "duration_s": stats.get("duration_s"),
            # The change profile (numbers), the verdict that explains `suspect`, and the names behind
            # them (`examples`: admins only). Snapshots made before bkd recorded them have none.
            "suspect": bool(isinstance(verdict, dict) and verdict.get("suspect")), "held": decision.held,
            "profile": stats.get("profile"), "anomaly": verdict, "examples": stats.get("examples"),
            "kind": copies.HOURLY, "snapshot": name,
        })
    return {"snapshots": entries, "total": len(listing),
            "next_before": names[0] if page and start > 0 else None}


def _archive_files(archive) -> int | None:
    """How many regular files an archive holds, from its index (None before it has one)."""
    try:
        entries = archiveindex.read(archive.index)
    except (OSError, archiveindex.IndexRefused):
        return None
    return None if entries is None else sum(e.kind in ("f", "h") for e in entries)


def list_copies(host_dir: HostDir, kinds: set[str]) -> list[dict]:
    """The host's monthly copies and archives (of kinds), oldest first: what
    each holds (the snapshot it was made from, its files), and its size — a
    monthly copy's the snapshot's, an archive's its compressed size."""
    found = []
    if copies.MONTHLY in kinds:
        for copy in copies.monthly_copies(host_dir):
            stats = read_meta(host_dir, copy.snapshot) if copy.snapshot else {}
            found.append({"name": copy.ref, "kind": copy.kind, "time": clock.iso(copy.time), "tier": "monthly copy",
                          "snapshot": copy.snapshot, "files": stats.get("files"), "bytes": stats.get("bytes")})
    if copies.ARCHIVE in kinds:
        for copy in copies.archives(host_dir):
            try:
                size = copy.path.stat().st_size
            except OSError:
                continue  # expired meanwhile
            found.append({"name": copy.ref, "kind": copy.kind, "time": clock.iso(copy.time), "tier": "archive",
                          "snapshot": copy.snapshot, "files": _archive_files(copy.archive), "bytes": size})
    for entry in found:
        entry.update(changed_files=None, deleted_files=None, transferred_bytes=None, duration_s=None)
    return sorted(found, key=lambda e: (e["time"], e["kind"]))


async def list_kinds(store: Store, host_dir: HostDir, policy: Retention, kind: str, limit: int | None,
                     before: str | None) -> dict:
    """snapshots.list: the hourly snapshots (paged), monthly copies and
    archives (all of them: a few dozen at most), or every kind, oldest first."""
    kinds = set(copies.KINDS) if kind == "all" else {kind}
    page = await list_snapshots(store, host_dir, policy, limit, before) if copies.HOURLY in kinds else \
        {"snapshots": [], "total": 0, "next_before": None}
    others = await asyncio.to_thread(list_copies, host_dir, kinds)
    if others:
        merged = sorted([*page["snapshots"], *others], key=lambda e: (e["time"], copies.KINDS.index(e["kind"])))
        page = {**page, "snapshots": merged, "total": page["total"] + len(others)}
    return page
