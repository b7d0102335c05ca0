"""The pure life of an alert episode over a simulated day: one hourly run an
hour, then the notifier's pass; what each scenario records and what it tells
the sinks (bkd.episodes)."""

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from bkd.alerts import episodes
from bkd.infra.clock import iso

START = datetime(2024, 3, 1, tzinfo=timezone.utc)


def simulate(outcomes: str, remind_every_h: float, acks=(), silenced=(), passes_per_hour: int = 1):
    """outcomes: one letter an hour, F (failed run) or O (good run). acks: hours
    at which an operator acknowledges; silenced: hours during which the host is
    silenced. Returns (episodes, notifications as (hour, event, episode number))."""
    current, done, sent = None, [], []
    remind_every = timedelta(hours=remind_every_h)
    for hour, outcome in enumerate(outcomes):
        for step in range(passes_per_hour):
            now = START + timedelta(hours=hour, minutes=60 * step / passes_per_hour)
            if step == 0:
                if outcome == "F":
                    current, opened = episodes.raised(current, "run_failed", "web1", None, "run failed", iso(now))
                    if opened:
                        current["id"] = len(done) + 1
                elif current is not None:
                    ended = episodes.resolved(current, iso(now))
                    if episodes.owes_recovery(ended):
                        sent.append((hour, episodes.RESOLVED, ended["id"]))
                    done.append(ended)
                    current = None
                if current is not None and hour in acks:
                    current = episodes.acked(current, "alice", "on it", iso(now)) or current
            if current is not None:
                silences = [{"host": "web1", "kind": None, "until": iso(now + timedelta(minutes=1))}] \
                    if hour in silenced else []
                event = episodes.due(current, now, episodes.silenced(silences, "run_failed", "web1", now),
                                     remind_every)
                if event:
                    current = episodes.sent(current, event, iso(now))
                    sent.append((hour, event, current["id"]))
    return done + ([current] if current else []), sent


def test_24_failed_hourly_runs_are_one_episode_with_count_24_then_one_recovery():
    found, sent = simulate("F" * 24 + "O", remind_every_h=6)
    (episode,) = found
    assert (episode["count"], episode["state"]) == (24, "resolved")
    assert episode["first_seen"] == iso(START) and episode["last_seen"] == iso(START + timedelta(hours=23))
    assert sent == [(0, "opened", 1), (6, "reminder", 1), (12, "reminder", 1), (18, "reminder", 1),
                    (24, "resolved", 1)]


@pytest.mark.parametrize("outcomes, remind_h, acks, silenced, expected", [
    # the default remind_every (1d): a day of failures is one opening, no reminder yet
    ("F" * 24 + "O", 24, (), (), [(0, "opened", 1), (24, "resolved", 1)]),
    ("F" * 26 + "O", 24, (), (), [(0, "opened", 1), (24, "reminder", 1), (26, "resolved", 1)]),
    # an ack holds until the recovery: no reminders, the recovery is still sent
    ("F" * 24 + "O", 6, (3,), (), [(0, "opened", 1), (24, "resolved", 1)]),
    # a host silenced all along records the failures and tells nobody, not even the recovery
    ("F" * 24 + "O", 6, (), range(25), []),
    # a silence in the middle holds reminders back; once over, the overdue reminder goes out
    ("F" * 24 + "O", 6, (), range(2, 10), [(0, "opened", 1), (10, "reminder", 1), (16, "reminder", 1),
                                           (22, "reminder", 1), (24, "resolved", 1)]),
    # opened during a silence: announced when the silence ends, if still open
    ("F" * 24 + "O", 6, (), range(5), [(5, "opened", 1), (11, "reminder", 1), (17, "reminder", 1),
                                       (23, "reminder", 1), (24, "resolved", 1)]),
    # ... and a silence that outlasts the episode: the recovery is silent too
    ("FFFO", 6, (), range(10), []),
    # a recovery during a silence still closes what was announced
    ("FFFFO", 6, (), range(2, 10), [(0, "opened", 1), (4, "resolved", 1)]),
    # the condition comes back: a new episode, announced anew
    ("FFOFFO", 6, (), (), [(0, "opened", 1), (2, "resolved", 1), (3, "opened", 2), (5, "resolved", 2)]),
    # good runs only: nothing at all
    ("OOOO", 6, (), (), []),
])
def test_episode_table(outcomes, remind_h, acks, silenced, expected):
    found, sent = simulate(outcomes, remind_h, acks, silenced)
    assert sent == expected
    assert [e["count"] for e in found] == [len(run) for run in outcomes.split("O") if run]


def test_an_ack_is_recorded_with_who_when_and_note_and_holds_while_the_count_grows():
    found, _ = simulate("F" * 10, 6, acks=(3,))
    (episode,) = found
    assert (episode["state"], episode["count"], episode["acked_by"], episode["note"]) == ("acked", 10, "alice", "on it")
    assert episode["acked_at"] == iso(START + timedelta(hours=3))
    assert episodes.acked(episode, "bob", None, iso(START)) is None  # already taken: not acked again


def test_passes_more_often_than_runs_do_not_send_more():
    assert simulate("F" * 24 + "O", 6, passes_per_hour=12)[1] == simulate("F" * 24 + "O", 6)[1]


def test_an_explicit_count_counts_the_failures_before_the_threshold():
    episode, opened = episodes.raised(None, "run_failed", "web1", None, "3 in a row", iso(START), count=3)
    assert opened and episode["count"] == 3
    episode, opened = episodes.raised(episode, "run_failed", "web1", None, "4 in a row", iso(START), count=4)
    assert not opened and episode["count"] == 4


@pytest.mark.parametrize("silence, kind, host, matches", [
    ({"host": "web1", "kind": None}, "stale", "web1", True),
    ({"host": "web1", "kind": None}, "stale", "db1", False),
    ({"host": None, "kind": "stale"}, "stale", "db1", True),
    ({"host": None, "kind": "stale"}, "run_failed", "db1", False),
    ({"host": "web1", "kind": "stale"}, "stale", "web1", True),
    ({"host": "web1", "kind": "stale"}, "run_failed", "web1", False),
    ({"host": None, "kind": "disk"}, "disk", None, True),
])
def test_a_silence_matches_its_host_and_kind_until_it_ends(silence, kind, host, matches):
    until = {**silence, "until": iso(START + timedelta(hours=1))}
    assert episodes.silenced([until], kind, host, START) is matches
    assert episodes.silenced([until], kind, host, START + timedelta(hours=1)) is False


@pytest.mark.parametrize("kinds, hosts, episode, wanted", [
    ([], [], {"kind": "stale", "host": "web1", "subject": None}, True),
    (["stale"], [], {"kind": "run_failed", "host": "web1", "subject": None}, False),
    ([], ["web1"], {"kind": "stale", "host": "web1", "subject": None}, True),
    ([], ["web1"], {"kind": "stale", "host": "db1", "subject": None}, False),
    ([], ["web1"], {"kind": "disk", "host": None, "subject": "space"}, False),  # server-wide: unfiltered sinks
    ([], [], {"kind": "notify", "host": None, "subject": "chat"}, False),  # its own failure
    ([], [], {"kind": "notify", "host": None, "subject": "mail"}, True),
])
def test_a_sink_takes_the_kinds_and_hosts_it_filters_on(kinds, hosts, episode, wanted):
    sink = SimpleNamespace(name="chat", kinds=kinds, hosts=hosts)
    assert episodes.wants(sink, episode) is wanted


def test_idempotency_keys_differ_per_episode_event_reminder_sink_and_database():
    keys = {episodes.key(instance, episode, event, reminders, sink)
            for instance in ("a1", "b2") for episode in (1, 2) for sink in ("chat", "mail")
            for event, reminders in (("opened", 0), ("reminder", 1), ("reminder", 2), ("resolved", 2))}
    assert len(keys) == 2 * 2 * 2 * 4
    assert episodes.key("a1", 7, "opened", 0, "chat") == episodes.key("a1", 7, "opened", 3, "chat")
