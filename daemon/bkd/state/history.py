"""Pruning the job history: jobs that ended longer ago than `[history] keep`
are deleted in the background (their counts stay in run_counts and
host_state, so metrics' counters never go down)."""

from __future__ import annotations

import asyncio

import structlog

from ..config.runtime import Runtime
from ..infra import clock
from .store import Store

log = structlog.get_logger()


async def prune_history(runtime: Runtime, store: Store) -> None:
    """The `history` loop: a pass at start, then every keep/2 (at most hourly)."""
    while True:
        keep = runtime.config.history.keep
        deleted = await store.jobs.prune_before(clock.iso_ms(clock.now() - keep))
        if deleted:
            log.info("history.pruned", jobs=deleted, keep_s=int(keep.total_seconds()))
        await asyncio.sleep(max(1.0, min(3600.0, keep.total_seconds() / 2)))
