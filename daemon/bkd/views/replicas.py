"""What a replica server says about its upstreams (SPEC §5 `replicas.list`,
`bkctl replicas`, the daily report's upstreams, the replication metrics):
each [[replica]] — its primary, the last visit, the newest generation of
its state database kept here — and per replicated host the newest copy,
the primary's newest, the lag and the last result. From the fleet and
the last visits; the only disk it reads is the list of state generations."""

from __future__ import annotations

import asyncio
from datetime import datetime

from ..config.models import Config, Replica, format_duration
from ..config.runtime import Runtime
from ..infra import clock
from ..replica import generations
from ..replica.upstreams import Upstreams, Visit
from ..state.hosts import Fleet
from ..tree.layout import upstream_state_dir
from ..tree.upstream import Upstream


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


class Replicas:
    """The replica server's view of its upstreams, from the fleet and the last visits."""

    def __init__(self, runtime: Runtime, fleet: Fleet, upstreams: Upstreams):
        self.runtime = runtime
        self.fleet = fleet
        self.upstreams = upstreams

    def hosts_of(self, replica: Replica, now: datetime) -> list[dict]:
        """The replica's hosts as `replicas.list` shows them (the metrics read them too)."""
        config = self.runtime.config
        hosts = []
        for name in config.hosts:
            found = config.upstream_of(name)
            if found is None or found[0] is not replica:
                continue
            facts, record = self.fleet.facts_of(name), self.fleet.record(name)
            seen = facts.upstream or Upstream()
            lag = seen.lag(record.added, now)
            hosts.append({
                "host": name, "primary_host": found[1],
                "newest": str(facts.latest) if facts.latest else None, "copies": facts.snapshots,
                "primary_newest": seen.primary_newest, "checked": clock.iso(seen.checked),
                "lag_s": int(lag.total_seconds()) if lag is not None else None,
                "behind": lag is not None and lag > replica.lag_limit, "on_primary": not seen.missing,
                "last_result": record.last_status,
            })
        return hosts

    def visit(self, replica: Replica) -> Visit | None:
        return self.upstreams.visits.get(replica.name)

    async def gather(self, now: datetime | None = None) -> list[dict]:
        """Every upstream, with its hosts (`detail`: for admins only)."""
        config = self.runtime.config
        now = now or clock.now()
        upstreams = []
        for replica in config.replica:
            visit = self.visit(replica)
            limit = replica.lag_limit
            upstreams.append({
                "name": replica.name, "source": replica.source, "hosts_glob": list(replica.hosts),
                "every": format_duration(replica.every), "lag_after": format_duration(limit),
                "visited": clock.iso(visit.started) if visit else None, "ok": visit.error is None if visit else None,
                "error": visit.error if visit else None, "detail": visit.detail if visit else None,
                "state": await asyncio.to_thread(_state, config, replica.name),
                "state_error": visit.state_error if visit else None,
                "hosts": self.hosts_of(replica, now),
            })
        return upstreams
