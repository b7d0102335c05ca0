"""Alerts as episodes (SPEC §8): raised while a condition holds (repeats only
count), resolved when it clears. Raising never fails the caller: if the
state store is down, the alert is logged and the caller carries on."""

from __future__ import annotations

import structlog

from bkctl.protocol import AlertKind

from . import clock
from .events import EventBus
from .store import STORE_ERRORS, Store

log = structlog.get_logger()


class Alerts:
    def __init__(self, store: Store, bus: EventBus):
        self.store = store
        self.bus = bus
        self.open_count: dict[tuple[str, str | None], int] = {}  # (kind, host) → current episodes

    async def load(self) -> None:
        self._count(await self.store.alerts.current())

    def _count(self, current: list[dict]) -> None:
        counts: dict[tuple[str, str | None], int] = {}
        for episode in current:
            key = (episode["kind"], episode["host"])
            counts[key] = counts.get(key, 0) + 1
        self.open_count = counts

    async def raise_(self, kind: AlertKind, host: str | None, message: str, subject: str | None = None) -> dict | None:
        """The condition holds now. message is shown to every role: outcomes
        and counts, never file names or command output."""
        now = clock.iso(clock.now())
        try:
            episode, opened = await self.store.alerts.touch(kind, host, subject, message, now)
        except STORE_ERRORS as e:
            log.error("alert.unrecorded", kind=str(kind), alert_host=host, subject=subject, message=message,
                      error=str(e))
            return None
        if opened:
            key = (str(kind), host)
            self.open_count[key] = self.open_count.get(key, 0) + 1
            log.warning("alert.opened", alert_id=episode["id"], kind=str(kind), message=message,
                        **({"host": host} if host else {}))
            self.bus.publish("alert", event="opened", **episode)
        return episode

    async def resolve(self, kind: AlertKind, host: str | None, subject: str | None = None) -> None:
        """The condition cleared (for subject, or every subject when None)."""
        key = (str(kind), host)
        if not self.open_count.get(key):
            return  # nothing open: no database round trip on every good run
        try:
            resolved = await self.store.alerts.resolve(kind, host, subject, clock.iso(clock.now()))
        except STORE_ERRORS as e:
            log.error("alert.resolve_failed", kind=str(kind), alert_host=host, error=str(e))
            return
        self.open_count[key] = max(0, self.open_count.get(key, 0) - len(resolved))
        for episode in resolved:
            log.info("alert.resolved", alert_id=episode["id"], kind=str(kind), **({"host": host} if host else {}))
            self.bus.publish("alert", event="resolved", **episode)

    def is_current(self, kind: AlertKind, host: str | None) -> bool:
        """An episode of kind for host is open or acknowledged (not resolved)."""
        return bool(self.open_count.get((str(kind), host)))

    def open_for(self, host: str) -> int:
        return sum(count for (_, h), count in self.open_count.items() if h == host)

    def open_by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for (kind, _), count in self.open_count.items():
            counts[kind] = counts.get(kind, 0) + count
        return counts

    async def list(self, include_resolved: bool = False, limit: int = 1000) -> list[dict]:
        if include_resolved:
            return await self.store.alerts.recent(limit)
        return await self.store.alerts.current()

    async def ack(self, ids: list[int] | None, host: str | None, kind: str | None, by: str,
                  note: str | None) -> list[dict]:
        acked = await self.store.alerts.ack(ids, host, kind, by, note, clock.iso(clock.now()))
        for episode in acked:
            self.bus.publish("alert", event="acked", **episode)
        return acked
