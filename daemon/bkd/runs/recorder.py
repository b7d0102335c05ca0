"""Writing job records to the store without ever stranding a run.

Memory is the truth for unfinished jobs; the store is written after every
change. When a write fails (a full state_dir, a broken disk) the job is kept
in memory and marked dirty; the `store-sync` loop writes it again until the
store takes it. Only then does memory let go of a finished job."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import structlog

from ..state.hosts import HostRecord
from ..state.store import STORE_ERRORS, Store
from .registry import Job, Registry

log = structlog.get_logger()

RETRY_SECONDS = 5.0


class Recorder:
    def __init__(self, store: Store, registry: Registry, records: Mapping[str, HostRecord]):
        self.store = store
        self.registry = registry
        self.records = records  # each host's records in memory: its failure streak is counted there
        self.dirty: set[int] = set()
        self._wake = asyncio.Event()
        self._failing = False

    async def save(self, job: Job) -> bool:
        """Write job's current record; False (and dirty) if the store refused."""
        record = job.record()  # what this save writes; memory may move on while it waits
        try:
            streaks = {host: known.consecutive_failures for host in job.runs if (known := self.records.get(host))}
            await self.store.jobs.save(record, streaks)
        except STORE_ERRORS as e:
            if job.job_id not in self.dirty or not self._failing:
                log.error("store.write_failed", job_id=job.job_id, error=str(e),
                          retry_s=RETRY_SECONDS)
            self._failing = True
            self.dirty.add(job.job_id)
            self._wake.set()
            return False
        self.dirty.discard(job.job_id)
        if record["finished"] and all(run.final for run in job.runs.values()):
            # Let go only once the record written is the final one: an earlier save
            # that ends after the job did must not drop it before its end is stored.
            if job.record() == record:
                self.registry.forget(job.job_id)
        if self._failing and not self.dirty:
            self._failing = False
            log.info("store.recovered")
        return True

    async def run(self) -> None:
        """The store-sync loop: retry dirty jobs until the store takes them."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.dirty:
                await asyncio.sleep(RETRY_SECONDS)
                for job_id in sorted(self.dirty):
                    job = self.registry.jobs.get(job_id)
                    if job is None:
                        self.dirty.discard(job_id)
                    elif not await self.save(job):
                        break

    async def flush(self) -> None:
        """At shutdown: one last try for everything still dirty."""
        for job_id in sorted(self.dirty):
            job = self.registry.jobs.get(job_id)
            if job is not None:
                await self.save(job)
