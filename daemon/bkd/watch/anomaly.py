"""What an anomaly does once its snapshot exists (SPEC §8 "Anomalies").

The snapshot stage judges each snapshot before committing it and records a
suspect one in the host's hold record (tree/holds.py), so the run's own
prune, which comes after, already deletes nothing. Here the `anomaly`
alerts are kept in line with those records — one episode per unreleased
suspect snapshot (its name is the subject), opened after the run that made
it, at start (a crash between the commit and the alert loses nothing) and
resolved when an admin releases the host — and `holds.list` and
`hosts.release` are answered."""

from __future__ import annotations

import asyncio

import structlog

from bkctl.protocol import BACKUP_KINDS

from ..alerts.service import AlertKind, Alerts
from ..config.runtime import Runtime
from ..infra.errors import NotFound
from ..pipeline import anomaly
from ..state.hosts import Fleet
from ..tree import holds
from ..tree.layout import HostDir

log = structlog.get_logger()


def message(host: str, suspect: dict, held: bool) -> str:
    """The alert's words, for every role: the snapshot and the numbers, never a file name."""
    why = anomaly.explain(suspect.get("signals") or []) or "see bkctl holds"
    then = (f"pruning of {host} is held: nothing of it is deleted until an admin runs `bkctl hosts release {host}`"
            if held else f"pruning goes on ([anomaly] hold = false); `bkctl hosts release {host}` ends this alert")
    return f"snapshot {suspect['snapshot']} is suspect: {why}; {then}"


class Anomalies:
    def __init__(self, runtime: Runtime, alerts: Alerts, fleet: Fleet):
        self.runtime = runtime
        self.alerts = alerts
        self.fleet = fleet
        self._locks: dict[str, asyncio.Lock] = {}

    def _host_dir(self, host: str) -> HostDir:
        return HostDir.of(self.runtime.config.backup_root, host)

    async def settle(self, host: str) -> None:
        """Bring the host's `anomaly` alerts in line with its hold record: an
        open episode for each unreleased suspect snapshot, none without one."""
        async with self._locks.setdefault(host, asyncio.Lock()):
            hold = await asyncio.to_thread(holds.read, self._host_dir(host))
            wanted = {s["snapshot"]: message(host, s, hold.held) for s in (hold.suspects if hold else ())}
            if hold is not None and hold.problem:
                wanted["hold"] = f"{hold.problem}: pruning of {host} is held until an admin runs " \
                                 f"`bkctl hosts release {host}`"
            for subject, text in wanted.items():
                if not self.alerts.is_current(AlertKind.ANOMALY, host, subject):
                    await self.alerts.raise_(AlertKind.ANOMALY, host, text, subject=subject)
            for episode in list(self.alerts.current.values()):
                if episode["kind"] == AlertKind.ANOMALY and episode["host"] == host \
                        and episode["subject"] not in wanted:
                    await self.alerts.resolve(AlertKind.ANOMALY, host, episode["subject"])

    async def settle_all(self) -> None:
        """At start: every configured host's alerts, and those of hosts no longer configured."""
        hosts = set(self.runtime.config.hosts)
        hosts |= {e["host"] for e in self.alerts.current.values() if e["kind"] == AlertKind.ANOMALY and e["host"]}
        for host in sorted(hosts):
            await self.settle(host)

    async def concluded(self, run) -> None:
        """A run ended: a snapshot it made may be suspect."""
        if run.kind in BACKUP_KINDS and not run.request.dry_run and run.snapshot:
            await self.settle(run.host)

    def holds(self, admin: bool) -> list[dict]:
        """The configured hosts with unreleased suspect snapshots: since when,
        which, whether pruning is held, and the signals that made each suspect
        (example file names for admins only)."""
        found = []
        for host in self.runtime.config.hosts:
            hold = holds.read(self._host_dir(host))
            if hold is not None:
                found.append(self.view(host, hold, admin))
        return found

    @staticmethod
    def view(host: str, hold: holds.Hold, admin: bool) -> dict:
        signals = [{"snapshot": s["snapshot"], **{k: v for k, v in signal.items() if k not in ("judged", "spike")}}
                   for s in hold.suspects for signal in s.get("signals") or () if signal.get("spike")]
        record = {"host": host, "held": hold.held, "since": hold.since, "snapshots": hold.snapshots,
                  "signals": signals, "problem": hold.problem}
        if admin:
            record["examples"] = {s["snapshot"]: s.get("examples") or {} for s in hold.suspects}
        return record

    async def release(self, host: str, by: str, note: str | None) -> dict:
        """Lift the host's hold: its pruning goes on, its `anomaly` alerts resolve."""
        host_dir = self._host_dir(host)
        released = await asyncio.to_thread(holds.release, host_dir)
        if released is None:
            raise NotFound(f"{host} has no hold and no unreleased suspect snapshot")
        log.warning("anomaly.released", host=host, by=by, note=note, snapshots=released.snapshots,
                    since=released.since, held=released.held)
        self.fleet.refresh(host)
        await self.settle(host)
        return {"released": True, "host": host, "held": released.held, "since": released.since,
                "snapshots": released.snapshots}
