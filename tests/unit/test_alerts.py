"""Alert episodes as the service keeps them (bkd.alerts), on a real temporary
SQLite with a real event bus and a fake listener: raised, repeated,
resolved, acknowledged, silenced; a failing store or listener costs the
caller nothing."""

from datetime import timedelta

import pytest
from structlog.testing import capture_logs

from bkctl.protocol import AlertKind
from bkd.infra import clock
from bkd.alerts.service import Alerts
from bkd.infra.events import EventBus
from bkd.state.store import Store
from bkd.alerts.store import AlertStore

RUN_FAILED, STALE = AlertKind.RUN_FAILED, AlertKind.STALE


class Listener:
    def __init__(self):
        self.heard: list[tuple[str, int | None, str | None]] = []

    async def __call__(self, event: str, episode: dict) -> None:
        self.heard.append((event, episode["id"], episode.get("state")))


class Setup:
    def __init__(self, store: Store):
        self.store = store
        self.bus = EventBus()
        self.subscription = self.bus.subscribe({"alert"}, 100, lambda: None)
        self.alerts = Alerts(store, self.bus)
        self.listener = Listener()
        self.alerts.listeners.append(self.listener)

    def events(self) -> list[str]:
        """The `event` of each alert event published since the last look."""
        seen = []
        while not self.subscription.queue.empty():
            seen.append(self.subscription.queue.get_nowait()["event"])
        return seen


@pytest.fixture
async def setup(tmp_path):
    store = await Store.open(tmp_path / "bkd.sqlite")
    setup = Setup(store)
    await setup.alerts.load()
    yield setup
    await store.close()


async def refuse_writes(store: Store, refuse: bool) -> None:
    await store.db.execute(f"PRAGMA query_only={int(refuse)}")


async def test_a_condition_opens_one_episode_counts_its_repeats_and_resolves_when_it_clears(setup):
    alerts = setup.alerts
    first = await alerts.raise_(RUN_FAILED, "a", "snapshot run failed")
    assert (first["state"], first["count"], first["host"], first["subject"]) == ("open", 1, "a", None)
    assert setup.listener.heard == [("opened", first["id"], "open")] and setup.events() == ["opened"]
    again = await alerts.raise_(RUN_FAILED, "a", "snapshot run failed (2 in a row)")
    counted = await alerts.raise_(RUN_FAILED, "a", "snapshot run failed (5 in a row)", count=5)
    assert again["id"] == counted["id"] == first["id"] and (again["count"], counted["count"]) == (2, 5)
    assert len(setup.listener.heard) == 1 and setup.events() == ["repeated", "repeated"]  # repeats only count
    assert alerts.current[first["id"]]["message"] == "snapshot run failed (5 in a row)"
    assert alerts.is_current(RUN_FAILED, "a") and not alerts.is_current(RUN_FAILED, "b")
    assert alerts.open_for("a") == 1 and alerts.open_by_kind() == {"run_failed": 1}

    await alerts.resolve(RUN_FAILED, "a")
    assert setup.listener.heard[1:] == [("resolved", first["id"], "resolved")] and setup.events() == ["resolved"]
    assert alerts.current == {} and await AlertStore(setup.store).current() == []
    reopened = await alerts.raise_(RUN_FAILED, "a", "snapshot run failed")
    assert reopened["id"] != first["id"] and reopened["count"] == 1  # it came back: a new episode


async def test_resolving_ends_one_subject_or_every_subject_and_touches_the_store_only_when_something_is_open(
        setup):
    alerts = setup.alerts
    archive = await alerts.raise_(RUN_FAILED, "a", "archive run failed", subject="archive")
    monthly = await alerts.raise_(RUN_FAILED, "a", "monthly run failed", subject="monthly")
    backup = await alerts.raise_(RUN_FAILED, "a", "snapshot run failed")
    await alerts.resolve(RUN_FAILED, "a", "archive")
    assert set(alerts.current) == {monthly["id"], backup["id"]}
    await alerts.resolve(RUN_FAILED, "a")  # every subject's
    assert alerts.current == {}
    assert [event for event, *_ in setup.listener.heard] == ["opened"] * 3 + ["resolved"] * 3
    assert archive["id"] in {id_ for event, id_, _ in setup.listener.heard if event == "resolved"}
    statements = []
    await setup.store.db.set_trace_callback(statements.append)
    await alerts.resolve(RUN_FAILED, "a")  # what every good run does: nothing is open
    await alerts.resolve(STALE, "b")
    assert statements == []


async def test_a_failing_store_costs_the_caller_nothing(setup):
    alerts = setup.alerts
    open_ = await alerts.raise_(STALE, "a", "no snapshot for 3h")
    await refuse_writes(setup.store, True)
    with capture_logs() as logs:
        assert await alerts.raise_(RUN_FAILED, "b", "snapshot run failed") is None
        await alerts.resolve(STALE, "a")
    assert [e["event"] for e in logs] == ["alert.unrecorded", "alert.resolve_failed"]
    assert list(alerts.current) == [open_["id"]]  # not resolved: the next clear tries again
    assert setup.listener.heard == [("opened", open_["id"], "open")]
    await refuse_writes(setup.store, False)
    await alerts.resolve(STALE, "a")
    assert alerts.current == {}


async def test_a_listener_that_fails_costs_neither_the_alert_nor_the_other_listeners(setup):
    async def broken(event, episode):
        raise RuntimeError("a bug in a listener")

    setup.alerts.listeners.insert(0, broken)
    with capture_logs() as logs:
        episode = await setup.alerts.raise_(RUN_FAILED, "a", "snapshot run failed")
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["alert.listener_failed"]
    assert setup.listener.heard == [("opened", episode["id"], "open")]
    assert [e["id"] for e in await AlertStore(setup.store).current()] == [episode["id"]]


async def test_an_acknowledged_episode_stays_current_until_its_condition_clears(setup):
    alerts = setup.alerts
    taken = await alerts.raise_(RUN_FAILED, "a", "snapshot run failed")
    other = await alerts.raise_(STALE, "b", "no snapshot for 3h")
    assert alerts.summary() == {"open": 2, "by_kind": {"run_failed": 1, "stale": 1}, "unacknowledged": 2,
                                "silenced": 0}
    (acked,) = await alerts.ack(None, "a", None, "alice", "looking into it")
    assert (acked["id"], acked["state"], acked["acked_by"], acked["note"]) == (taken["id"], "acked", "alice",
                                                                               "looking into it")
    assert setup.listener.heard[-1] == ("acked", taken["id"], "acked") and setup.events()[-1] == "acked"
    assert alerts.is_current(RUN_FAILED, "a") and alerts.summary()["unacknowledged"] == 1
    assert await alerts.ack([taken["id"]], None, None, "bob", None) == []  # already taken
    repeated = await alerts.raise_(RUN_FAILED, "a", "snapshot run failed (2 in a row)")
    assert (repeated["id"], repeated["state"], repeated["count"]) == (taken["id"], "acked", 2)
    await alerts.resolve(RUN_FAILED, "a")
    assert list(alerts.current) == [other["id"]]


async def test_a_silence_is_recorded_and_its_end_tells_the_listeners(setup):
    alerts = setup.alerts
    episode = await alerts.raise_(RUN_FAILED, "a", "snapshot run failed")
    silence = await alerts.silence("a", None, clock.now() + timedelta(hours=1), "maintenance", "alice")
    assert alerts.is_silenced("run_failed", "a") and alerts.is_silenced("stale", "a")
    assert not alerts.is_silenced("run_failed", "b")
    assert alerts.record(alerts.current[episode["id"]])["silenced"] and alerts.summary()["silenced"] == 1
    await alerts.silence(None, "stale", clock.now() - timedelta(seconds=1), None, "alice")  # already over
    assert alerts.silences_in_force() == [silence] and not alerts.is_silenced("stale", "b")
    assert await alerts.unsilence("a", None, "alice") == [silence["id"]]
    assert not alerts.is_silenced("run_failed", "a") and alerts.summary()["silenced"] == 0
    # What the silence held back may be due now: the notifier hears of it.
    assert setup.listener.heard[-1] == ("unsilenced", None, None)
    assert await alerts.unsilence("a", None, "alice") == [] and len(setup.listener.heard) == 2


async def test_what_the_notifier_marked_sent_outlives_a_repeat_read_back_from_the_store(setup):
    alerts = setup.alerts
    episode = await alerts.raise_(RUN_FAILED, "a", "snapshot run failed")
    sent = clock.iso(clock.now())
    # The notifier marks the opening sent in memory before its outbox write reaches the store.
    alerts.sent({**episode, "notified": sent})
    repeated = await alerts.raise_(RUN_FAILED, "a", "snapshot run failed (2 in a row)")
    assert repeated["notified"] == alerts.current[episode["id"]]["notified"] == sent
    assert (await AlertStore(setup.store).current())[0]["notified"] is None


async def test_a_restart_finds_the_current_episodes_and_silences(setup):
    alerts = setup.alerts
    kept = await alerts.raise_(RUN_FAILED, "a", "snapshot run failed")
    gone = await alerts.raise_(STALE, "a", "no snapshot for 3h")
    await alerts.resolve(STALE, "a")
    await alerts.ack([kept["id"]], None, None, "alice", None)
    silence = await alerts.silence(None, "stale", clock.now() + timedelta(days=1), None, "alice")
    restarted = Alerts(setup.store, EventBus())
    await restarted.load()
    assert list(restarted.current) == [kept["id"]] and gone["id"] not in restarted.current
    assert restarted.current[kept["id"]]["state"] == "acked" and restarted.silences == [silence]
