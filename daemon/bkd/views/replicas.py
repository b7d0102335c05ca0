"""What a replica server says about its upstreams (SPEC §5 `replicas.list`,
`bkctl replicas`, the daily report's upstreams, the replication metrics):
each [[replica]] — its primary, the last visit, the newest generation of
its state database kept here — and per replicated host the newest copy,
the primary's newest, the lag and the last result. From the read model and
the last visits; the only disk it reads is the list of state generations."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import TYPE_CHECKING

from ..config.models import Config, Replica, format_duration
from ..infra import clock
from ..replica import generations
from ..state.hosts import ReadModel
from ..tree.layout import upstream_state_dir
from ..tree.upstream import Upstream

if TYPE_CHECKING:
    from ..app import Services


def _state(config: Config, replica: str) -> dict | None:
    """The newest generation of the primary's state database kept here, and whether its chain is whole."""
    directory = upstream_state_dir(config.backup_root, replica)
    kept = generations.names(directory)
    if not kept:
        return None
    mark = generations.read_mark(directory / kept[-1])
    return {"generation": kept[-1], "generations": len(kept), "path": str(directory / kept[-1] / generations.DATABASE),
            "audit_entries": mark.entries if mark else None, "ok": mark.ok if mark else None,
            "problem": mark.message() if mark else "its chain.json is unreadable"}


def hosts_of(config: Config, readmodel: ReadModel, replica: Replica, now: datetime) -> list[dict]:
    """The replica's hosts as `replicas.list` shows them (the metrics read them too)."""
    hosts = []
    for host in config.host:
        found = config.upstream_of(host.name)
        if found is None or found[0] is not replica:
            continue
        facts, record = readmodel.facts_of(host.name), readmodel.record(host.name)
        seen = facts.upstream or Upstream()
        lag = seen.lag(record.added, now)
        hosts.append({
            "host": host.name, "primary_host": found[1],
            "newest": str(facts.latest) if facts.latest else None, "copies": facts.snapshots,
            "primary_newest": seen.primary_newest, "checked": clock.iso(seen.checked),
            "lag_s": int(lag.total_seconds()) if lag is not None else None,
            "behind": lag is not None and lag > replica.lag_limit, "on_primary": not seen.missing,
            "last_result": record.last_status,
        })
    return hosts


async def gather(s: Services, now: datetime | None = None) -> list[dict]:
    """Every upstream, with its hosts (`detail`: for admins only)."""
    config = s.runtime.config
    now = now or clock.now()
    upstreams = []
    for replica in config.replica:
        visit = s.upstreams.visits.get(replica.name) if s.upstreams else None
        limit = replica.lag_limit
        hosts = hosts_of(config, s.readmodel, replica, now)
        upstreams.append({
            "name": replica.name, "source": replica.source, "hosts_glob": list(replica.hosts),
            "every": format_duration(replica.every), "lag_after": format_duration(limit),
            "visited": clock.iso(visit.started) if visit else None, "ok": visit.error is None if visit else None,
            "error": visit.error if visit else None, "detail": visit.detail if visit else None,
            "state": await asyncio.to_thread(_state, config, replica.name),
            "state_error": visit.state_error if visit else None,
            "hosts": hosts,
        })
    return upstreams
