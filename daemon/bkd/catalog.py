"""Listing a host's snapshots: the filesystem says which exist, the database
caches their statistics, and each snapshot's meta/ record is the source the
cache is rebuilt from (in one transaction, however many are missing)."""

from __future__ import annotations

import asyncio
import bisect
import json
from datetime import datetime

import structlog

from . import clock
from .config.models import Retention
from .errors import InvalidArgument
from .layout import HostDir, SnapshotName
from .pipeline.prune import host_plan
from .store import STORE_ERRORS, Store

log = structlog.get_logger()


def read_meta(host_dir: HostDir, name: SnapshotName) -> dict:
    try:
        record = json.loads(host_dir.meta_file(name).read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in record.items() if k not in ("name", "time")} if isinstance(record, dict) else {}


def _listing(host_dir: HostDir, policy: Retention, now: datetime) -> tuple[list[SnapshotName], dict[str, str]]:
    """The host's complete snapshots, oldest first, and each one's retention
    tier, in a worker thread: the retention plan of a thousand snapshots
    takes milliseconds that the event loop should spend answering others."""
    return host_dir.snapshots(), {d.snapshot: d.tier for d in host_plan(host_dir, policy, now)}


async def list_snapshots(store: Store, host_dir: HostDir, policy: Retention, limit: int | None,
                         before: str | None) -> dict:
    """The newest `limit` complete snapshots older than `before` (all when no
    limit), oldest first, with `next_before` to ask for the page before them."""
    host = host_dir.root.name
    parsed = None if before is None else SnapshotName.parse(before)
    if before is not None and parsed is None:
        raise InvalidArgument(f"invalid params: before: {before!r} is not a snapshot name")
    names, tiers = await asyncio.to_thread(_listing, host_dir, policy, clock.now())
    end = len(names) if parsed is None else bisect.bisect_left(names, parsed)
    start = max(0, end - limit) if limit else 0
    page = names[start:end]
    try:
        recorded = await store.snapshots.stats_between(host, str(page[0]), str(page[-1])) if page else {}
    except STORE_ERRORS as e:
        log.warning("store.read_failed", host=host, error=str(e))
        recorded = None
    missing = [name for name in page if recorded is None or str(name) not in recorded]
    if missing:  # the database lost them (restored, rebuilt): meta/ is the source
        found = await asyncio.to_thread(lambda: {str(n): read_meta(host_dir, n) for n in missing})
        if recorded is not None:
            try:
                await store.snapshots.record(host, [(name, clock.iso(SnapshotName.parse(name).time), stats, None)
                                                    for name, stats in found.items()])
            except STORE_ERRORS as e:
                log.warning("store.write_failed", host=host, error=str(e))
        recorded = {**(recorded or {}), **found}
    entries = []
    for name in page:
        stats = recorded.get(str(name), {})
        entries.append({
            "name": str(name), "time": clock.iso(name.time), "tier": tiers.get(str(name)),
            "files": stats.get("files"), "bytes": stats.get("bytes"),
            "changed_files": stats.get("changed_files"), "deleted_files": stats.get("deleted_files"),
            "transferred_bytes": stats.get("transferred_bytes"), "duration_s": stats.get("duration_s"),
        })
    return {"snapshots": entries, "total": len(names),
            "next_before": str(page[0]) if page and start > 0 else None}
