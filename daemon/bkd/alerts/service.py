"""Alerts as episodes (SPEC §8): raised while a condition holds (repeats only
count), resolved when it clears, acknowledged by operators, silenced for
maintenance (recorded, not notified). Raising never fails the caller: if
the state store is down, the alert is logged and the caller carries on.

The current episodes and the silences in force are kept in memory as well,
so status, metrics and the notifier never read the database for them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime

import structlog

from bkctl.protocol import AlertKind

from ..infra import clock
from ..infra.errors import Conflict
from ..infra.events import EventBus
from ..state.store import STORE_ERRORS, Store
from .store import AlertStore
from . import episodes

log = structlog.get_logger()

# listener(event, episode): event is opened, resolved or acked; called after the store has it.
Listener = Callable[[str, dict], Awaitable[None]]
SENT = ("notified", "reminded", "reminders")  # what an episode has told the sinks
MAX_SILENCES = 1000  # in force at once; each host and kind (or host, or kind) has at most one


class Alerts:
    def __init__(self, store: Store, bus: EventBus):
        self.table = AlertStore(store)  # the episodes and silences, in the state database
        self.bus = bus
        self.current: dict[int, dict] = {}  # id → open or acknowledged episode
        self.silences: list[dict] = []  # in force (or recently: each check compares `until` with now)
        self.listeners: list[Listener] = []

    async def load(self) -> None:
        self.current = {episode["id"]: episode for episode in await self.table.current()}
        self.silences = await self.table.silences(clock.iso(clock.now()))

    async def _tell(self, event: str, episode: dict) -> None:
        for listener in self.listeners:
            try:
                await listener(event, episode)
            except Exception:  # a listener's bug must not cost the alert
                log.exception("alert.listener_failed", alert_id=episode["id"])

    async def raise_(self, kind: AlertKind, host: str | None, message: str, subject: str | None = None,
                     count: int | None = None) -> dict | None:
        """The condition holds now (count times in all, when given). message is
        shown to every role: outcomes and counts, never file names or command output."""
        now = clock.iso(clock.now())
        try:
            episode, opened = await self.table.touch(str(kind), host, subject, message, now, count)
        except STORE_ERRORS as e:
            log.error("alert.unrecorded", kind=str(kind), alert_host=host, subject=subject, message=message,
                      error=str(e))
            return None
        episode = self._with_sent(episode)
        self.current[episode["id"]] = episode
        record = self.record(episode)
        if opened:
            log.warning("alert.opened", alert_id=episode["id"], kind=str(kind), message=message,
                        silenced=record["silenced"], **({"host": host} if host else {}))
            self.bus.publish("alert", event="opened", **record)
            await self._tell("opened", episode)
        else:
            self.bus.publish("alert", event="repeated", **record)
        return episode

    async def resolve(self, kind: AlertKind, host: str | None, subject: str | None = None) -> None:
        """The condition cleared (for subject, or every subject when None)."""
        if not any(e["kind"] == kind and e["host"] == host and (subject is None or e["subject"] == subject)
                   for e in self.current.values()):
            return  # nothing open: no database round trip on every good run
        try:
            resolved = await self.table.resolve(str(kind), host, subject, clock.iso(clock.now()))
        except STORE_ERRORS as e:
            log.error("alert.resolve_failed", kind=str(kind), alert_host=host, error=str(e))
            return
        for episode in resolved:
            episode = self._with_sent(episode)
            self.current.pop(episode["id"], None)
            log.info("alert.resolved", alert_id=episode["id"], kind=str(kind), **({"host": host} if host else {}))
            self.bus.publish("alert", event="resolved", **self.record(episode))
            await self._tell("resolved", episode)

    def is_current(self, kind: AlertKind, host: str | None, subject: str | None = None) -> bool:
        """An episode of kind for host (and subject, when given) is open or acknowledged."""
        return any(e["kind"] == kind and e["host"] == host and (subject is None or e["subject"] == subject)
                   for e in self.current.values())

    def open_for(self, host: str) -> int:
        return sum(e["host"] == host for e in self.current.values())

    def open_by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for episode in self.current.values():
            counts[episode["kind"]] = counts.get(episode["kind"], 0) + 1
        return counts

    def summary(self) -> dict:
        """What `status` shows: current episodes by kind, how many are
        unacknowledged, how many silenced."""
        now = clock.now()
        current = list(self.current.values())
        return {"open": len(current), "by_kind": self.open_by_kind(),
                "unacknowledged": sum(e["state"] == "open" for e in current),
                "silenced": sum(self.is_silenced(e["kind"], e["host"], now) for e in current)}

    def is_silenced(self, kind: str, host: str | None, now: datetime | None = None) -> bool:
        return episodes.silenced(self.silences, kind, host, now or clock.now())

    def record(self, episode: dict) -> dict:
        """An episode as alerts.list shows it: with whether it is silenced now."""
        return {**episode, "silenced": self.is_silenced(episode["kind"], episode["host"])}

    async def list(self, include_resolved: bool = False, limit: int = 1000) -> list[dict]:
        found = await (self.table.recent(limit) if include_resolved else self.table.current())
        return [self.record(episode) for episode in found]

    async def ack(self, ids: list[int] | None, host: str | None, kind: str | None, by: str,
                  note: str | None) -> list[dict]:
        acked = await self.table.ack(ids, host, kind, by, note, clock.iso(clock.now()))
        for episode in acked:
            episode = self._with_sent(episode)
            self.current[episode["id"]] = episode
            log.info("alert.acked", alert_id=episode["id"], by=by)
            self.bus.publish("alert", event="acked", **self.record(episode))
            await self._tell("acked", episode)
        return acked

    def _with_sent(self, episode: dict) -> dict:
        """episode as the store returned it, with what was sent as memory knows
        it: the notifier marks an episode sent before its write reaches the store."""
        known = self.current.get(episode["id"])
        return episode if known is None else {**episode, **{k: known[k] for k in SENT}}

    def sent(self, episode: dict) -> None:
        """The notifier queued a notification of a current episode."""
        known = self.current.get(episode["id"])
        if known is not None:
            known.update({k: episode[k] for k in SENT})

    # ---- silences ---------------------------------------------------------------

    async def silence(self, host: str | None, kind: str | None, until: datetime, note: str | None,
                      by: str) -> dict:
        """Silence host and/or kind until then; a silence of the same host and
        kind in force is replaced. Conflict when MAX_SILENCES others are in force."""
        made = await self.table.silence(host, kind, clock.iso(until), note, by, clock.iso(clock.now()),
                                               MAX_SILENCES)
        if made is None:
            raise Conflict(f"too many silences in force ({MAX_SILENCES}, one per host and kind at most): "
                           "end some with `bkctl alerts unsilence` first")
        silence, replaced = made
        self.silences = [s for s in self.silences if s["id"] not in replaced] + [silence]
        log.info("alert.silenced", silenced_host=host, kind=kind, until=silence["until"], by=by,
                 **({"replaced": replaced} if replaced else {}))
        self.bus.publish("alert", event="silenced", silence=silence, replaced=replaced)
        return silence

    async def unsilence(self, host: str | None, kind: str | None, by: str) -> list[int]:
        ended = await self.table.unsilence(host, kind, clock.iso(clock.now()))
        self.silences = [s for s in self.silences if s["id"] not in ended]
        if ended:
            log.info("alert.unsilenced", silenced_host=host, kind=kind, by=by)
            self.bus.publish("alert", event="unsilenced", ids=ended)
            await self._tell("unsilenced", {"id": None})  # what the silence held back may be due now
        return ended

    def silences_in_force(self) -> list[dict]:
        now = clock.now()
        self.silences = [s for s in self.silences if clock.parse(s["until"]) > now]
        return list(self.silences)
