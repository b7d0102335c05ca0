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
        })
    return {"snapshots": entries, "total": len(listing),
            "next_before": names[0] if page and start > 0 else None}
