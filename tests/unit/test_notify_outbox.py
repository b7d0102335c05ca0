"""What each alert episode owes the sinks and delivering it (bkd.notify.outbox),
on a real temporary SQLite with real alerts, a fake sink and a fake clock
for the outbox's retry times: opened, reminders, resolved; each episode's
notifications in order; retries with backoff; permanent failures; bounds;
what the store refused and what was in flight at a stop."""

import asyncio
from collections import Counter
from datetime import timedelta

import pytest
import tomli_w
from runcore import until

from bkctl.protocol import AlertKind
from bkd.infra import clock
from bkd.alerts.service import Alerts
from bkd.config import load_config
from bkd.infra.events import EventBus
from bkd.alerts.notify import outbox as outbox_module, sinks as sinks_module
from bkd.alerts.notify.outbox import GIVE_UP_AFTER, MAX_IN_FLIGHT, MAX_PER_SINK, Notifier
from bkd.alerts.notify.sinks import Outcome
from bkd.config.runtime import Runtime
from bkd.state.store import Store
from bkd.alerts.store import AlertStore

RUN_FAILED, NOTIFY = AlertKind.RUN_FAILED, AlertKind.NOTIFY
START = 1_000_000.0  # the fake clock's first reading (Unix seconds)
HOSTS = ("a", "b", "h1", "h2", "h3", "h4", "h5", "h6", "h7")


class FakeTime:
    """The outbox's clock (`time.time`, `time.monotonic`), moved by the test."""

    def __init__(self):
        self.now = START

    def time(self) -> float:
        return self.now

    monotonic = time


class FakeSinks:
    """Stands for every sink: records each attempt and answers what the test
    scripted for (sink, event), delivered otherwise; with a gate, each attempt
    waits for it (a slow receiver)."""

    def __init__(self):
        self.attempts: list[tuple[str, str, int | None, str]] = []  # (sink, event, episode id, key)
        self.script: dict[tuple[str, str], list[Outcome]] = {}
        self.gate: asyncio.Event | None = None
        self.in_flight: Counter = Counter()
        self.most: Counter = Counter()  # the most attempts in flight at once, per sink and in all ("*")

    async def deliver(self, sink, notification) -> Outcome:
        self.attempts.append((sink.name, notification.event, notification.alert["id"], notification.key))
        if self.gate is not None:
            self.in_flight[sink.name] += 1
            for name in (sink.name, "*"):
                self.most[name] = max(self.most[name], sum(self.in_flight.values()) if name == "*" else
                                      self.in_flight[name])
            try:
                await self.gate.wait()
            finally:
                self.in_flight[sink.name] -= 1
        script = self.script.get((sink.name, notification.event))
        return script.pop(0) if script else Outcome(True)

    def events(self, sink: str = "chat") -> list[str]:
        return [event for name, event, _, _ in self.attempts if name == sink]


def webhook(name: str, **fields) -> dict:
    return {"name": name, "type": "webhook", "url": f"http://127.0.0.1:9/{name}", **fields}


class Setup:
    def __init__(self, tmp_path, sinks: list[dict], fake: FakeSinks, time: FakeTime, **settings):
        path = tmp_path / "bkd.toml"
        path.write_text(tomli_w.dumps({"backup_root": str(tmp_path / "backup"), "state_dir": str(tmp_path),
                                       "alerts": {"remind_every": "1h", "retry_after": "30s"}, "notify": sinks,
                                       "host": [{"name": name, "source": f"/srv/{name}"} for name in HOSTS],
                                       **settings}))
        self.tmp_path = tmp_path
        self.runtime = Runtime(path, load_config(path))
        self.sinks = fake
        self.clock = time
        self.loops: list[asyncio.Task] = []

    async def open(self) -> "Setup":
        self.store = await Store.open(self.tmp_path / "bkd.sqlite")
        self.alerts = Alerts(self.store, EventBus())
        await self.alerts.load()
        self.notifier = await Notifier.create(self.runtime, self.store, self.alerts)
        self.alerts.listeners.append(self.notifier.on_alert)
        return self

    def start(self, loop) -> None:
        self.loops.append(asyncio.create_task(loop()))

    async def stop(self) -> None:
        for task in self.loops:
            # Cancel until the loop has ended: Python 3.11's wait_for, which the loops
            # used to wait with, loses a cancel that meets a wake-up in the same instant.
            while not task.done():
                task.cancel()
                await asyncio.wait([task], timeout=0.1)
        self.loops.clear()

    async def went_round(self) -> None:
        """The outbox loop has looked at the queue once more, from the top."""
        for _ in range(2):  # the second wake is taken only once the look the first began is done
            self.notifier.wake_outbox.set()
            await until(lambda: not self.notifier.wake_outbox.is_set(), "the outbox loop to look")

    async def rows(self, event: str | None = None, sink: str = "chat") -> list[dict]:
        return [row for row in await self.store.outbox.history(sink) if event is None or row["event"] == event]

    async def episode(self, host: str = "a") -> dict:
        episode = await self.alerts.raise_(RUN_FAILED, host, "snapshot run failed")
        await self.notifier.reminders_pass(clock.now())
        return episode


@pytest.fixture
async def build(tmp_path, monkeypatch):
    fake, time = FakeSinks(), FakeTime()
    monkeypatch.setattr(sinks_module, "deliver", fake.deliver)
    monkeypatch.setattr(outbox_module, "time", time)
    made = []

    async def make(sinks=(webhook("chat"),), **settings) -> Setup:
        setup = await Setup(tmp_path, list(sinks), fake, time, **settings).open()
        made.append(setup)
        return setup

    yield make
    for setup in made:
        await setup.stop()
        await setup.store.close()


async def test_an_episode_owes_its_opening_then_a_reminder_every_remind_every_then_its_recovery(build):
    s = await build([webhook("chat"), webhook("ops", hosts=["b"])])
    t0 = clock.now().replace(microsecond=0)  # as the episode records it: a reminder falls due on the second
    episode = await s.alerts.raise_(RUN_FAILED, "a", "snapshot run failed")
    for minutes in (0, 0, 59, 60, 61, 119, 120):
        await s.notifier.reminders_pass(t0 + timedelta(minutes=minutes))
    await s.alerts.resolve(RUN_FAILED, "a")  # queued at once, no pass needed
    rows = await s.rows()
    assert [row["event"] for row in rows] == ["opened", "reminder", "reminder", "resolved"]
    assert [row["key"].rsplit("-", 2)[1:] for row in rows] == [
        ["opened", "chat"], ["reminder1", "chat"], ["reminder2", "chat"], ["resolved", "chat"]]
    assert len({row["key"] for row in rows}) == 4 and all(row["episode_id"] == episode["id"] for row in rows)
    assert await s.rows(sink="ops") == []  # its filter names another host
    (stored,) = await AlertStore(s.store).recent(1)
    assert (stored["reminders"], stored["reminded"]) == (2, clock.iso(t0 + timedelta(minutes=120)))


async def test_nothing_is_owed_while_silenced_once_acknowledged_or_for_an_episode_that_came_and_went_unannounced(
        build):
    s = await build()
    t0 = clock.now()
    await s.alerts.silence("a", None, t0 + timedelta(hours=1), "maintenance", "alice")
    await s.alerts.raise_(RUN_FAILED, "a", "snapshot run failed")
    await s.notifier.reminders_pass(t0)
    assert await s.rows() == []  # recorded, not notified
    await s.alerts.unsilence("a", None, "alice")
    await s.notifier.reminders_pass(t0)
    assert [row["event"] for row in await s.rows()] == ["opened"]  # what the silence held back
    await s.alerts.ack(None, "a", None, "alice", None)
    await s.notifier.reminders_pass(t0 + timedelta(hours=5))
    assert [row["event"] for row in await s.rows()] == ["opened"]
    await s.alerts.raise_(RUN_FAILED, "b", "snapshot run failed")  # comes and goes before any pass
    await s.alerts.resolve(RUN_FAILED, "b")
    assert [row["event"] for row in await s.rows()] == ["opened"]


async def test_the_reminders_loop_queues_an_opening_as_soon_as_an_episode_opens(build):
    s = await build()
    s.start(s.notifier.reminders)
    episode = await s.alerts.raise_(RUN_FAILED, "a", "snapshot run failed")
    rows = await until(s.rows, "the opening to be queued")
    assert [(row["event"], row["episode_id"]) for row in rows] == [("opened", episode["id"])]


async def test_one_episodes_notifications_arrive_in_order_and_a_failed_one_is_retried_with_backoff(build):
    s = await build()
    s.sinks.script[("chat", "opened")] = [Outcome(False, "HTTP 500"), Outcome(False, "HTTP 502")]
    await s.episode()
    await s.alerts.resolve(RUN_FAILED, "a")  # due at once, behind the opening
    s.start(s.notifier.outbox)
    for attempt, window in ((1, (15, 30)), (2, (30, 60))):  # retry_after, doubled, with jitter
        await until(lambda: len(s.sinks.attempts) == attempt, f"attempt {attempt}")
        await until(lambda: not s.notifier.in_flight, "the failure to be recorded")
        await s.went_round()
        assert s.sinks.events() == ["opened"] * attempt  # the recovery waits behind its opening
        (opened,) = await s.rows("opened")
        assert (opened["state"], opened["attempts"]) == ("pending", attempt)
        assert s.clock.now + window[0] <= opened["next_attempt"] <= s.clock.now + window[1]
        s.clock.now = opened["next_attempt"] - 0.5
        await s.went_round()
        assert len(s.sinks.attempts) == attempt  # not due yet
        s.clock.now = opened["next_attempt"]
        s.notifier.wake_outbox.set()
    await until(lambda: len(s.sinks.attempts) == 4, "the opening, then the recovery")
    assert s.sinks.events() == ["opened", "opened", "opened", "resolved"]
    assert len({key for _, event, _, key in s.sinks.attempts if event == "opened"}) == 1  # one idempotency key
    await until(lambda: not s.notifier.in_flight, "the deliveries to be recorded")
    rows = await s.rows()
    assert [(r["event"], r["state"], r["attempts"]) for r in rows] == [("opened", "delivered", 3),
                                                                        ("resolved", "delivered", 1)]
    (chat,) = await s.notifier.status()
    assert (chat["ok"], chat["delivered"], chat["failing"], chat["queued"], chat["last_error"]) == (
        True, 2, 0, 0, "HTTP 502")


async def test_a_permanent_failure_is_given_up_at_once_opens_a_notify_alert_and_later_ones_are_still_tried(build):
    s = await build()
    s.sinks.script[("chat", "opened")] = [Outcome(False, "HTTP 404", permanent=True)]
    await s.episode()
    s.start(s.notifier.outbox)
    await until(lambda: s.alerts.is_current(NOTIFY, None, "chat"), "a notify alert")
    (opened,) = await s.rows("opened")
    assert (opened["state"], opened["attempts"], opened["last_error"]) == ("failed", 1, "HTTP 404")
    (alert,) = [e for e in s.alerts.current.values() if e["kind"] == "notify"]
    assert alert["message"] == ("webhook sink chat refused a notification (HTTP 404); it is dropped, "
                                "later ones are still tried")
    assert "127.0.0.1" not in alert["message"]
    await s.alerts.resolve(RUN_FAILED, "a")
    await until(lambda: s.sinks.events() == ["opened", "resolved"], "the recovery")
    await until(lambda: not s.alerts.is_current(NOTIFY, None, "chat"), "a delivery to end the notify alert")


async def test_a_sink_failing_five_times_in_a_row_opens_a_notify_alert_and_a_notification_is_given_up_after_a_day(
        build):
    s = await build()
    s.sinks.script[("chat", "opened")] = [Outcome(False, "HTTP 503")] * 7
    await s.episode()
    s.start(s.notifier.outbox)
    for attempt in range(1, 6):
        await until(lambda: len(s.sinks.attempts) == attempt, f"attempt {attempt}")
        await until(lambda: not s.notifier.in_flight, "the failure to be recorded")
        assert s.alerts.is_current(NOTIFY, None, "chat") == (attempt == 5)
        (opened,) = await s.rows("opened")
        s.clock.now = opened["next_attempt"]
        s.notifier.wake_outbox.set()
    (alert,) = [e for e in s.alerts.current.values() if e["kind"] == "notify"]
    assert alert["message"] == "webhook sink chat has failed 5 times in a row (HTTP 503); notifications are kept " \
                               "and retried"
    await until(lambda: len(s.sinks.attempts) == 6, "attempt 6")
    await until(lambda: not s.notifier.in_flight, "the failure to be recorded")
    s.clock.now = START + GIVE_UP_AFTER  # a day after it was queued
    s.notifier.wake_outbox.set()
    await until(lambda: len(s.sinks.attempts) == 7, "the last attempt")
    await until(lambda: not s.notifier.in_flight, "the failure to be recorded")
    (opened,) = await s.rows("opened")
    assert (opened["state"], opened["attempts"]) == ("failed", 7)
    s.clock.now += 10 * 86400
    await s.went_round()
    assert len(s.sinks.attempts) == 7


async def test_deliveries_are_bounded_per_sink_and_in_all(build):
    late = ["h6", "h7"]
    s = await build([webhook("s1"), *(webhook(name, hosts=late) for name in ("s2", "s3", "s4"))])
    s.sinks.gate = asyncio.Event()  # every receiver is slow
    for host in ("h1", "h2", "h3", "h4", "h5", *late):
        await s.episode(host)  # s1 owes 7 openings, the others 2 each: 13 in all, s1's first
    s.start(s.notifier.outbox)
    await until(lambda: sum(s.sinks.in_flight.values()) == MAX_IN_FLIGHT, "the deliveries to fill every slot")
    await s.went_round()
    await s.went_round()
    assert MAX_IN_FLIGHT == 8 and MAX_PER_SINK == 4
    assert sum(s.sinks.in_flight.values()) == 8 and s.sinks.in_flight["s1"] == 4  # the others got the rest
    s.sinks.gate.set()
    await until(lambda: len(s.sinks.attempts) == 13, "every opening")
    assert s.sinks.most["*"] == 8 and s.sinks.most["s1"] == 4
    assert Counter(name for name, *_ in s.sinks.attempts) == {"s1": 7, "s2": 2, "s3": 2, "s4": 2}


async def test_what_the_store_refuses_to_queue_waits_in_memory_and_is_queued_later(build):
    s = await build()
    episode = await s.alerts.raise_(RUN_FAILED, "a", "snapshot run failed")
    await s.store.db.execute("PRAGMA query_only=1")  # every write fails, as on a full disk
    await s.notifier.reminders_pass(clock.now())
    await s.notifier.reminders_pass(clock.now())  # memory knows it is queued: not queued twice
    assert len(s.notifier.unsaved) == 1 and await s.rows() == []
    s.start(s.notifier.outbox)
    await s.went_round()
    assert len(s.notifier.unsaved) == 1 and s.sinks.attempts == []
    await s.store.db.execute("PRAGMA query_only=0")
    s.notifier.wake_outbox.set()
    await until(lambda: s.sinks.events() == ["opened"], "the opening, once the store took it")
    assert s.notifier.unsaved == []
    (stored,) = await AlertStore(s.store).current()
    assert stored["id"] == episode["id"] and stored["notified"] is not None  # the episode's part too


async def test_what_was_in_flight_when_the_loop_stopped_is_sent_again_with_the_same_key(build):
    s = await build()
    s.sinks.gate = asyncio.Event()
    await s.episode()
    s.start(s.notifier.outbox)
    await until(lambda: s.sinks.in_flight["chat"] == 1, "the delivery to begin")
    await s.stop()  # the loop stops (a restart, a shutdown) while the receiver has not answered
    (opened,) = await s.rows("opened")
    assert opened["state"] == "pending"
    s.sinks.gate.set()
    s.start(s.notifier.outbox)
    await until(lambda: len(s.sinks.attempts) == 2, "the delivery again")
    assert s.sinks.attempts[0] == s.sinks.attempts[1]  # same sink, event, episode and idempotency key
    # A restarted daemon keys its notifications as before: a receiver can tell a repeat.
    assert (await Notifier.create(s.runtime, s.store, s.alerts)).instance == s.notifier.instance


async def test_a_daily_report_queued_twice_for_the_same_day_is_queued_once_per_sink(build):
    s = await build([webhook("chat"), webhook("ops")], report={"enabled": True, "notify": ["ops"]})
    digest = {"hosts": []}
    assert await s.notifier.queue_report(digest, "2026-01-02") == ["ops"]
    assert await s.notifier.queue_report(digest, "2026-01-02") == ["ops"]  # a restart on the same day
    assert [row["event"] for row in await s.rows(sink="ops")] == ["report"] and await s.rows() == []
