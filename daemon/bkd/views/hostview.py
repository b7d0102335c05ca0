"""One host as every view shows it — `status`, `report`, `metrics` and the
systemd status line — built once per answer from its settings, its facts
and its records (all in memory: no tree walked, no history read)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from ..config.models import Config, HostSettings
from ..schedule.due import is_stale, snapshot_due
from ..state.hosts import Fleet, HostRecord
from ..tree.facts import HostFacts
from ..tree.layout import SnapshotName


@dataclass(frozen=True)
class HostView:
    name: str
    settings: HostSettings
    facts: HostFacts  # what its directory holds
    record: HostRecord  # how its runs went
    latest: SnapshotName | None  # the newest complete snapshot not dated in the future
    age_s: int | None  # of that snapshot
    stale: bool  # older than stale_factor × snapshot_every (or none since the host was added)
    stale_after_s: int
    next_run: datetime | None  # its next snapshot (None: its schedule is off)


def host_views(config: Config, fleet: Fleet, now: datetime, names: Iterable[str] | None = None) -> list[HostView]:
    """The view of each host named (default: every configured host, in config order)."""
    views = []
    for name in config.hosts if names is None else names:
        settings, facts, record = config.hosts[name], fleet.facts_of(name), fleet.record(name)
        latest = facts.latest
        schedule = settings.schedule
        views.append(HostView(
            name, settings, facts, record, latest,
            age_s=int((now - latest.time).total_seconds()) if latest else None,
            stale=is_stale(latest.time if latest else None, record.added, settings, now),
            stale_after_s=int((schedule.snapshot_every * schedule.stale_factor).total_seconds()),
            next_run=snapshot_due(settings, facts, record, now)))
    return views
