"""Notifications (SPEC §8): what each alert episode owes the sinks goes into
a persistent outbox in SQLite, and a supervised worker delivers it.

- The `reminders` loop asks bkd.episodes what each current episode owes
  (`opened`, `reminder`) and queues it; it is woken when an episode opens
  or a silence ends, and looks again every few seconds for reminders. A
  resolution queues `resolved` at once. Queuing is a store write, never
  network: what the store refuses waits in memory and is written later.
- The `outbox` loop delivers: the oldest pending notification of each
  (sink, episode) first, so each alert's notifications arrive in order; at
  most MAX_PER_SINK at a time per sink and MAX_IN_FLIGHT in all; a failure is
  retried with exponential backoff and jitter for up to GIVE_UP_AFTER, a
  permanent one (4xx) is given up at once. Delivery is at least once:
  whatever was in flight when the daemon stopped is sent again, with the
  same idempotency key."""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections import Counter
from datetime import datetime, timedelta

import structlog

from bkctl.protocol import AlertKind

from ...config.models import Config, EmailSink, WebhookSink
from ...config.runtime import Runtime
from ...infra import clock
from ...infra.errors import NotFound
from ...infra.supervise import woken
from ...state.store import STORE_ERRORS, Store
from .. import episodes
from ..service import Alerts
from . import sinks as sinkmod
from .sinks import Notification, Outcome

log = structlog.get_logger()

MAX_IN_FLIGHT = 8  # deliveries at once, all sinks together
MAX_PER_SINK = 4  # … and per sink, so one slow receiver cannot take every slot
MAX_BACKOFF = 3600.0  # seconds: the longest wait between two attempts
GIVE_UP_AFTER = 86400.0  # seconds a notification is retried before it is given up
FAILING_ALERT_AFTER = 5  # failed attempts of a sink in a row that open a `notify` alert
MAX_WAIT = 60.0  # the outbox loop looks at the queue at least this often
HEADS = 200  # notifications considered per look
PRUNE_EVERY = 3600.0


def backoff(attempts: int, first: float, rand=random.random) -> float:
    """Seconds before attempt attempts+1: first, doubled each time up to
    MAX_BACKOFF, with jitter (half fixed, half random) so that many queued
    notifications do not retry in lockstep."""
    base = min(first * 2 ** max(0, attempts - 1), MAX_BACKOFF)
    return base / 2 + rand() * base / 2


def reminder_period(remind_every: timedelta) -> float:
    """How often the reminders loop looks: often enough that a reminder is at
    most a quarter of remind_every late, at least every minute."""
    return min(60.0, max(1.0, remind_every.total_seconds() / 4))


class Notifier:
    def __init__(self, runtime: Runtime, store: Store, alerts: Alerts, instance: str):
        self.runtime = runtime
        self.store = store
        self.alerts = alerts
        self.instance = instance  # tells this database's idempotency keys from another's
        self.in_flight: dict[int, str] = {}  # outbox row id → sink name
        self.unsaved: list[tuple[list[dict], dict | None]] = []  # queued in memory: the store refused them
        self.wake_outbox = asyncio.Event()
        self.wake_reminders = asyncio.Event()
        runtime.on_reload(self._reloaded)
        self._pruned: float | None = None  # not 0.0: monotonic time starts at boot

    def _reloaded(self, old: Config, new: Config) -> None:
        self.wake_reminders.set()  # sinks or their filters may have changed
        self.wake_outbox.set()

    @classmethod
    async def create(cls, runtime: Runtime, store: Store, alerts: Alerts) -> Notifier:
        instance = await store.get_value("notify.instance")
        if instance is None:
            instance = secrets.token_hex(4)
            await store.set_value("notify.instance", instance)
        return cls(runtime, store, alerts, instance)

    @property
    def server(self) -> str:
        return sinkmod.server_name(self.runtime.config.server_name)

    def sinks_for(self, episode: dict) -> list[EmailSink | WebhookSink]:
        return [sink for sink in self.runtime.config.notify if episodes.wants(sink, episode)]

    # ---- queuing ----------------------------------------------------------------

    async def on_alert(self, event: str, episode: dict) -> None:
        """Alerts' listener: a resolution is queued now; anything else may make
        an opening due, which the reminders loop decides."""
        if event == "resolved":
            if episodes.owes_recovery(episode):
                await self._queue(episode, episodes.RESOLVED, self.sinks_for(episode), None)
        else:
            self.wake_reminders.set()

    async def reminders_pass(self, now: datetime) -> None:
        remind_every = self.runtime.config.alerts.remind_every
        for episode_id in list(self.alerts.current):
            episode = self.alerts.current.get(episode_id)
            if episode is None:
                continue  # resolved meanwhile
            targets = self.sinks_for(episode)
            if not targets:
                continue
            event = episodes.due(episode, now, self.alerts.is_silenced(episode["kind"], episode["host"], now),
                                 remind_every)
            if event is None:
                continue
            updated = episodes.sent(episode, event, clock.iso(now))
            self.alerts.sent(updated)  # before any await: the next pass must not queue it again
            await self._queue(updated, event, targets, updated)

    async def _queue(self, episode: dict, event: str, targets: list, update: dict | None) -> None:
        now = clock.now()
        alert = self.alerts.record(episode)
        items = [{"key": episodes.key(self.instance, episode["id"], event, episode["reminders"], sink.name),
                  "sink": sink.name, "event": event, "episode_id": episode["id"], "alert": alert,
                  "created": clock.iso(now), "created_s": time.time(), "next_attempt": time.time()}
                 for sink in targets]
        if not items:
            return
        log.info("notify.queued", alert_id=episode["id"], notification=event, sinks=[i["sink"] for i in items])
        try:
            await self.store.outbox.enqueue(items, update)
        except STORE_ERRORS as e:
            log.error("notify.queue_unsaved", alert_id=episode["id"], notification=event, error=str(e))
            self.unsaved.append((items, update))
        self.wake_outbox.set()

    async def queue_report(self, digest: dict, day: str) -> list[str]:
        """Queue the daily digest for the [report] notify sinks; one key per
        day and sink, so a report queued twice (a restart) is sent once."""
        config = self.runtime.config
        targets = [sink for name in config.report.notify if (sink := config.find_sink(name))]
        now = clock.now()
        items = [{"key": f"bkd-{self.instance}-report-{day}-{sink.name}", "sink": sink.name,
                  "event": sinkmod.REPORT, "episode_id": None, "alert": digest, "created": clock.iso(now),
                  "created_s": time.time(), "next_attempt": time.time()} for sink in targets]
        if items:
            await self.store.outbox.enqueue(items)
            self.wake_outbox.set()
        return [sink.name for sink in targets]

    async def _save_unsaved(self) -> None:
        while self.unsaved:
            items, update = self.unsaved[0]
            try:
                await self.store.outbox.enqueue(items, update)
            except STORE_ERRORS:
                return  # still refused: the next look tries again
            self.unsaved.pop(0)
            log.info("notify.queue_saved", alert_id=items[0]["episode_id"], notification=items[0]["event"])

    async def reminders(self) -> None:
        """The reminders loop (supervised)."""
        while True:
            self.wake_reminders.clear()
            await self.reminders_pass(clock.now())
            await woken(self.wake_reminders, reminder_period(self.runtime.config.alerts.remind_every))

    # ---- delivering ---------------------------------------------------------------

    async def outbox(self) -> None:
        """The outbox loop (supervised): deliver what is due, bounded."""
        tasks: set[asyncio.Task] = set()
        try:
            while True:
                self.wake_outbox.clear()
                await self._save_unsaved()
                wait = await self._start_due(tasks)
                if self.unsaved:
                    wait = min(wait, 5.0)
                await self._prune()
                await woken(self.wake_outbox, wait)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.in_flight.clear()

    async def _start_due(self, tasks: set[asyncio.Task]) -> float:
        """Start due deliveries within the limits; seconds until the next is due."""
        if len(self.in_flight) >= MAX_IN_FLIGHT:
            return MAX_WAIT  # a delivery ending wakes the loop
        per_sink = Counter(self.in_flight.values())
        full = {name for name, count in per_sink.items() if count >= MAX_PER_SINK}
        configured = {sink.name: sink for sink in self.runtime.config.notify}
        now = time.time()
        for row in await self.store.outbox.heads(set(self.in_flight), full, HEADS):
            if row["next_attempt"] > now:
                return min(MAX_WAIT, row["next_attempt"] - now)  # soonest due first: the rest are later
            if len(self.in_flight) >= MAX_IN_FLIGHT:
                break
            if per_sink[row["sink"]] >= MAX_PER_SINK:
                continue
            sink = configured.get(row["sink"])
            if sink is None:
                await self._finish(row, None, Outcome(False, "the sink is no longer configured", permanent=True))
                continue
            per_sink[row["sink"]] += 1
            self.in_flight[row["id"]] = row["sink"]
            task = asyncio.create_task(self._deliver(row, sink), name=f"notify:{row['sink']}:{row['id']}")
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        return MAX_WAIT

    async def _deliver(self, row: dict, sink: EmailSink | WebhookSink) -> None:
        try:
            notification = Notification(row["key"], row["event"], row["alert"], self.server, await self._audit_head())
            outcome = await sinkmod.deliver(sink, notification)
            await self._finish(row, sink, outcome)
        except STORE_ERRORS as e:  # the row stays pending: it is sent again (same key)
            log.error("notify.unrecorded", sink=row["sink"], key=row["key"], error=str(e))
        finally:
            self.in_flight.pop(row["id"], None)
            self.wake_outbox.set()

    async def _audit_head(self) -> dict | None:
        """The audit log's newest entry, in every notification: a copy off the server."""
        try:
            head = await self.store.audit.newest()
        except STORE_ERRORS as e:  # the notification goes out without it
            log.warning("store.read_failed", error=str(e))
            return None
        return {"id": head.id, "hash": head.hash}

    async def _finish(self, row: dict, sink, outcome: Outcome) -> None:
        attempts = row["attempts"] + 1
        now = clock.iso(clock.now())
        fields = {"sink": row["sink"], "notification": row["event"], "alert_id": row["episode_id"], "attempts": attempts}
        if outcome.delivered:
            await self.store.outbox.delivered(row["id"], row["sink"], attempts, now)
            log.info("notify.delivered", **fields)
            await self.alerts.resolve(AlertKind.NOTIFY, None, subject=row["sink"])
            return
        give_up = outcome.permanent or time.time() - row["created_s"] >= GIVE_UP_AFTER
        retry_after = self.runtime.config.alerts.retry_after.total_seconds()
        next_attempt = None if give_up else time.time() + backoff(attempts, retry_after)
        failing = await self.store.outbox.failed(row["id"], row["sink"], attempts, outcome.error, now, next_attempt)
        if sink is not None:
            fields["target"] = sinkmod.describe(sink)  # URLs redacted: they may carry a token
        if give_up:
            log.error("notify.given_up", error=outcome.error, permanent=outcome.permanent, **fields)
        else:
            log.warning("notify.retry", error=outcome.error, retry_in_s=round(next_attempt - time.time(), 1),
                        **fields)
        if sink is not None and (outcome.permanent or failing >= FAILING_ALERT_AFTER) \
                and not self.alerts.is_current(AlertKind.NOTIFY, None, row["sink"]):
            what = (f"refused a notification ({outcome.error}); it is dropped, later ones are still tried"
                    if outcome.permanent else
                    f"has failed {failing} times in a row ({outcome.error}); notifications are kept and retried")
            await self.alerts.raise_(AlertKind.NOTIFY, None, f"{sink.type} sink {row['sink']} {what}",
                                     subject=row["sink"])

    async def _prune(self) -> None:
        if self._pruned is not None and time.monotonic() - self._pruned < PRUNE_EVERY:
            return
        self._pruned = time.monotonic()
        before = clock.iso(clock.now() - timedelta(seconds=7 * 86400))
        try:
            await self.store.outbox.prune(before)
        except STORE_ERRORS as e:
            log.warning("notify.prune_failed", error=str(e))

    # ---- what `bkctl notify` shows and does -------------------------------------------

    async def status(self) -> list[dict]:
        states = await self.store.outbox.sinks()
        result = []
        for sink in self.runtime.config.notify:
            state = states.get(sink.name, {})
            result.append({"name": sink.name, "type": sink.type, "ok": not state.get("failing"),
                           "last_delivery": state.get("last_delivery"), "last_error": state.get("last_error"),
                           "last_error_at": state.get("last_error_at"), "failing": state.get("failing", 0),
                           "queued": state.get("queued", 0), "delivered": state.get("delivered", 0),
                           "failed": state.get("failed", 0)})
        return result

    async def test(self, name: str | None) -> dict[str, dict]:
        """Send a test message to one sink (or all) now, outside the queue."""
        targets = [s for s in self.runtime.config.notify if name is None or s.name == name]
        if name is not None and not targets:
            raise NotFound(f"no [[notify]] sink is named {name}")
        token = secrets.token_hex(4)
        server = self.server
        alert = {"id": None, "kind": None, "host": None, "subject": None, "state": None, "count": 0,
                 "message": f"a test message from bkd on {server}", "silenced": False}

        async def one(sink) -> dict:
            key = f"bkd-{self.instance}-test-{token}-{sink.name}"
            started = time.monotonic()
            outcome = await sinkmod.deliver(sink, Notification(key, episodes.TEST, alert, server,
                                                                await self._audit_head()))
            try:
                await self.store.outbox.record_attempt(sink.name, outcome.error, clock.iso(clock.now()))
            except STORE_ERRORS as e:
                log.warning("store.write_failed", error=str(e))
            log.info("notify.test", sink=sink.name, ok=outcome.delivered, error=outcome.error)
            return {"ok": outcome.delivered, "error": outcome.error,
                    "seconds": round(time.monotonic() - started, 2)}

        return dict(zip([s.name for s in targets], await asyncio.gather(*(one(s) for s in targets)), strict=True))
