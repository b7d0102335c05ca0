"""What bkd knows about each host, kept in memory so that `status`, the
schedule, `report` and `metrics` never walk trees or read the job history:

- facts: what the host's directory holds (tree/facts.py), re-read after
  every change bkd makes and by the freshness loop;
- records: how its runs went (last result, failure streak, last attempts),
  loaded once at start and moved as runs start and end.

One host whose directory cannot be read gets an `error` in its facts; the
others are unaffected."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from bkctl.protocol import BACKUP_KINDS, Kind, Status

from ..config.models import Config
from ..config.runtime import Runtime
from ..infra import clock
from ..tree.facts import HostFacts, read_facts
from ..tree.layout import HostDir
from .store import STORE_ERRORS, Store

log = structlog.get_logger()

HEAVY_KINDS = (Kind.ARCHIVE, Kind.MONTHLY)


@dataclass
class HostRecord:
    added: datetime | None = None  # first seen in the config: a host that never succeeded is stale from here
    last_status: str | None = None
    last_error: str | None = None
    last_finished: datetime | None = None
    last_attempt: datetime | None = None  # the last snapshot run's start: the schedule counts from it too
    consecutive_failures: int = 0
    heavy_attempt: dict[Kind, datetime] = field(default_factory=dict)

    def attempted(self, kind: Kind, dry_run: bool, now: datetime) -> None:
        """A run of kind was claimed now: the schedule counts the next one from it."""
        if kind in BACKUP_KINDS and not dry_run:
            self.last_attempt = now
        elif kind in HEAVY_KINDS:
            self.heavy_attempt[kind] = now

    def concluded(self, kind: Kind, dry_run: bool, status: Status, error: str | None,
                  finished: datetime | None) -> None:
        """A run ended. A backup run's result is the host's last one, and its
        failure lengthens the host's failure streak, its success ends it (the
        one place the streak is counted: the store keeps what memory says)."""
        if kind not in BACKUP_KINDS or dry_run:
            return
        self.last_status, self.last_error, self.last_finished = str(status), error, finished
        if status is Status.FAILED:
            self.consecutive_failures += 1
        elif status in (Status.OK, Status.WARNING):
            self.consecutive_failures = 0


class Fleet:
    """Each host's facts and records. A reload that adds hosts starts their
    records (and the store's: a host that never succeeds is stale counted
    from when it was added)."""

    def __init__(self, runtime: Runtime, store: Store | None = None):
        self.runtime = runtime
        self.store = store
        self.facts: dict[str, HostFacts] = {}
        self.records: dict[str, HostRecord] = {}
        self._writes: set[asyncio.Task] = set()
        runtime.on_reload(self._reloaded)

    def load_records(self, rows: dict[str, dict]) -> None:
        for host, row in rows.items():
            self.records[host] = HostRecord(
                added=clock.parse(row["added"]), last_status=row["last_status"], last_error=row["last_error"],
                last_finished=clock.parse(row["last_finished"]), last_attempt=clock.parse(row["last_attempt"]),
                consecutive_failures=row["consecutive_failures"])

    def record(self, host: str) -> HostRecord:
        return self.records.setdefault(host, HostRecord(added=clock.now()))

    def refresh(self, host: str) -> HostFacts:
        facts = read_facts(HostDir.of(self.runtime.config.backup_root, host), clock.now())
        self.facts[host] = facts
        return facts

    def refresh_all(self) -> None:
        for host in self.runtime.config.hosts:
            self.refresh(host)

    def facts_of(self, host: str) -> HostFacts:
        return self.facts.get(host) or self.refresh(host)

    def _reloaded(self, old: Config, new: Config) -> None:
        added = [name for name in new.hosts if name not in old.hosts]
        for name in added:
            self.record(name)
        if added and self.store is not None:
            task = asyncio.get_running_loop().create_task(self._remember(added))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def _remember(self, hosts: list[str]) -> None:
        try:
            await self.store.jobs.ensure_hosts(hosts)
        except STORE_ERRORS as e:
            log.warning("store.write_failed", error=str(e))
