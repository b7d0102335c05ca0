"""The life of an alert episode and what it owes the notification sinks, as
pure functions of (episode, time, policy). The store persists what these
decide; the notifier enqueues what `due` says. An episode is the record
`alerts.list` shows (a dict), times as ISO-8601 UTC strings.

- raised: the condition holds now; opens an episode or counts a repeat.
- resolved: the condition cleared; the episode ends.
- acked: an operator took it; no more reminders, still current until it clears.
- due: the notification an open episode owes now: `opened` once (also when
  it opened during a silence that has ended since), then a `reminder` every
  `remind_every` while it is open, unacknowledged and not silenced.
- owes_recovery: a resolved episode sends `resolved` iff its opening was sent.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from ..infra import clock

OPENED, REMINDER, RESOLVED, TEST = "opened", "reminder", "resolved", "test"
EVENTS = (OPENED, REMINDER, RESOLVED, TEST)


def raised(current: dict | None, kind: str, host: str | None, subject: str | None, message: str,
           now: str, count: int | None = None) -> tuple[dict, bool]:
    """(the episode, whether it opened now). count: how many times the
    condition has held, when the caller knows better than "once more" (a
    run_failed that opens after 3 failures in a row counts 3)."""
    if current is not None and current["state"] != "resolved":
        return {**current, "count": count or current["count"] + 1, "last_seen": now, "message": message}, False
    return {"id": None, "kind": kind, "host": host, "subject": subject, "state": "open", "count": count or 1,
            "message": message, "first_seen": now, "last_seen": now, "resolved": None, "acked_by": None,
            "acked_at": None, "note": None, "notified": None, "reminded": None, "reminders": 0}, True


def resolved(current: dict, now: str) -> dict:
    return {**current, "state": "resolved", "resolved": now}


def acked(current: dict, by: str, note: str | None, now: str) -> dict | None:
    """The acknowledged episode, or None when it is not open (already acked or resolved)."""
    if current["state"] != "open":
        return None
    return {**current, "state": "acked", "acked_by": by, "acked_at": now, "note": note}


def due(episode: dict, now: datetime, silenced: bool, remind_every: timedelta) -> str | None:
    """The notification a current episode owes at now, if any."""
    if episode["state"] != "open" or silenced:
        return None
    if episode["notified"] is None:
        return OPENED
    last = clock.parse(episode["reminded"] or episode["notified"])
    return REMINDER if now - last >= remind_every else None


def sent(episode: dict, event: str, now: str) -> dict:
    """The episode once event has been queued for its sinks."""
    if event == OPENED:
        return {**episode, "notified": now}
    if event == REMINDER:
        return {**episode, "reminded": now, "reminders": episode["reminders"] + 1}
    return episode


def owes_recovery(episode: dict) -> bool:
    """A recovery closes what was said: sent iff the opening was sent (silenced
    or not by now), so a receiver never keeps an incident open for ever, and
    an episode that came and went unannounced stays unannounced."""
    return episode["notified"] is not None


def silenced(silences: list[dict], kind: str, host: str | None, now: datetime) -> bool:
    """A silence names a host, a kind, or both; it matches until its `until`."""
    return any((s["host"] is None or s["host"] == host) and (s["kind"] is None or s["kind"] == kind)
               and clock.parse(s["until"]) > now for s in silences)


def wants(sink, episode: dict) -> bool:
    """Whether a [[notify]] sink takes this episode: its kinds and hosts
    filters ([] = all). An alert about no host (disk, internal, notify) goes
    only to sinks without a hosts filter; a sink never hears of its own failure
    (it could not deliver it)."""
    if sink.kinds and episode["kind"] not in sink.kinds:
        return False
    if sink.hosts and episode["host"] not in sink.hosts:
        return False
    return not (episode["kind"] == "notify" and episode["subject"] == sink.name)


def key(instance: str, episode_id: int, event: str, reminders: int, sink: str) -> str:
    """The idempotency key of one notification: unique per (episode, event,
    sink), and per reminder; `instance` tells databases apart, so a rebuilt
    state database never reuses a key a receiver has seen."""
    number = str(reminders) if event == REMINDER else ""
    return f"bkd-{instance}-{episode_id}-{event}{number}-{sink}"
