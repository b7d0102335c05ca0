"""Pure rules behind watching: retry backoff, reminder cadence, the disk
trend, telling an SSH refusal from an unreachable host, hung limits, what a
notification and a ping look like."""

import hashlib
import hmac
import json
from datetime import datetime, timedelta, timezone

import pytest

from bkctl.protocol import Kind
from bkd import __version__, disk, failures
from bkd.clock import iso
from bkd.config.models import Schedule
from bkd.freshness import hung_limit
from bkd.notify.outbox import GIVE_UP_AFTER, MAX_BACKOFF, backoff, reminder_period
from bkd.notify.ping import ping_url
from bkd.notify.sinks import Notification, signature, subject_line, webhook_body

NOW = datetime(2024, 3, 1, 12, tzinfo=timezone.utc)


@pytest.mark.parametrize("attempts, low, high", [(1, 15, 30), (2, 30, 60), (3, 60, 120), (8, 1800, 3600),
                                                  (9, 1800, 3600), (40, 1800, 3600)])
def test_backoff_doubles_from_retry_after_with_jitter_up_to_an_hour(attempts, low, high):
    assert backoff(attempts, 30, rand=lambda: 0.0) == low
    assert backoff(attempts, 30, rand=lambda: 1.0) == high


def test_a_notification_is_tried_for_a_day_about_30_times_at_the_default_retry():
    elapsed, attempts = 0.0, 1
    while elapsed < GIVE_UP_AFTER:
        elapsed += backoff(attempts, 30, rand=lambda: 1.0)
        attempts += 1
    assert 25 <= attempts <= 40 and MAX_BACKOFF == 3600


@pytest.mark.parametrize("remind_every, period", [("1d", 60), ("1h", 60), ("2m", 30), ("4s", 1), ("1s", 1)])
def test_reminders_are_looked_for_often_enough(remind_every, period):
    from bkd.config.models import parse_duration
    assert reminder_period(parse_duration(remind_every)) == period


def _samples(used_per_day: float, days: int, free_now: int, step_h: int = 6) -> list[dict]:
    count = days * 24 // step_h
    return [{"time": iso(NOW - timedelta(hours=step_h * (count - i))),
             "used_bytes": int(1e12 + used_per_day * (i * step_h / 24)),
             "free_bytes": free_now + int(used_per_day * (count - i) * step_h / 24)} for i in range(count + 1)]


@pytest.mark.parametrize("per_day, days, free, expected", [
    (10e9, 14, 100e9, 10.0),  # 10 GB a day, 100 GB free: ten days
    (1e9, 14, 100e9, 100.0),
    (0, 14, 100e9, None),  # flat: never
    (-5e9, 14, 100e9, None),  # shrinking: never
    (10e9, 0, 100e9, None),  # less than a day of samples: no trend yet
])
def test_days_to_full_follows_the_growth_of_the_last_weeks(per_day, days, free, expected):
    found = disk.days_to_full(_samples(per_day, days, int(free)), NOW)
    assert found == (None if expected is None else pytest.approx(expected, rel=0.01))


def test_samples_older_than_the_window_do_not_count():
    old_growth = [{"time": iso(NOW - timedelta(days=60 - i)), "used_bytes": int(1e12 + i * 50e9),
                   "free_bytes": int(1e12)} for i in range(10)]
    flat = [{"time": iso(NOW - timedelta(days=10 - i)), "used_bytes": int(2e12), "free_bytes": int(1e12)}
            for i in range(11)]
    assert disk.days_to_full(old_growth + flat, NOW) is None


def test_disk_problems_name_space_inodes_and_trend():
    sample = {"time": iso(NOW), "used_bytes": 95, "free_bytes": 5, "total_bytes": 100,
              "used_inodes": 10, "free_inodes": 90, "total_inodes": 100}
    found = disk.problems(sample, _samples(10e9, 14, int(50e9)), NOW, 10, 14)
    assert sorted(found) == ["space", "trend"]
    assert "5.0% space free, less than 10%" in found["space"] and "about 5.0 days" in found["trend"]
    assert disk.problems({**sample, "free_inodes": 5}, [], NOW, 10, 14).keys() == {"space", "inodes"}
    assert disk.problems({**sample, "free_bytes": 50}, [], NOW, 10, 14) == {}


@pytest.mark.parametrize("said, refusal", [
    (["bkd@10.0.0.5: Permission denied (publickey)."], failures.LOGIN),
    (["bkd@10.0.0.5: Permission denied (publickey,password,keyboard-interactive)."], failures.LOGIN),
    (["Received disconnect from 10.0.0.5 port 22:2: Too many authentication failures"], failures.LOGIN),
    (["Host key verification failed."], failures.HOST_KEY),
    (["@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@",
      "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @"], failures.HOST_KEY),
    (["No ED25519 host key is known for [127.0.0.5]:2222 and you have requested strict checking.",
      "Host key verification failed."], failures.HOST_KEY),
    (["ssh: connect to host 10.0.0.5 port 22: Connection refused"], None),
    (["ssh: connect to host web1 port 22: No route to host"], None),
    (["ssh: Could not resolve hostname web1: Name or service not known"], None),
    ([], None),
    # ssh's words inside other text are not ssh saying them (issue 18, item 7)
    (['rsync: [sender] send_files failed to open "/home/x/bkd@h: Permission denied (publickey).": '
      "No such file or directory (2)"], None),
    (["echo Host key verification failed."], None),
])
def test_an_ssh_refusal_is_told_apart_from_an_unreachable_host(said, refusal):
    assert failures.ssh_refusal(said) == refusal


@pytest.mark.parametrize("kind, expected", [(Kind.SNAPSHOT, timedelta(hours=1)), (Kind.ALL, timedelta(hours=1)),
                                            (Kind.ARCHIVE, timedelta(hours=4)), (Kind.RESTORE, None)])
def test_a_run_is_hung_past_its_next_slot_unless_hung_after_is_set(kind, expected):
    assert hung_limit(kind, Schedule(), None) == expected
    assert hung_limit(kind, Schedule(), timedelta(minutes=5)) == timedelta(minutes=5)


ALERT = {"id": 7, "kind": "run_failed", "host": "web1", "subject": None, "state": "open", "count": 3,
         "message": "snapshot run failed (3 in a row)", "first_seen": "2024-03-01T09:00:00Z",
         "last_seen": "2024-03-01T11:00:00Z", "resolved": None, "acked_by": None, "acked_at": None, "note": None,
         "silenced": False}


@pytest.mark.parametrize("event, alert, line", [
    ("opened", ALERT, "[bkd backup1] web1: run failed (3×)"),
    ("reminder", ALERT, "[bkd backup1] web1: run failed (3×), still open"),
    ("resolved", ALERT, "[bkd backup1] web1: resolved: run failed (3×)"),
    ("opened", {**ALERT, "count": 1, "kind": "stale"}, "[bkd backup1] web1: no recent snapshot"),
    ("opened", {**ALERT, "count": 1, "kind": "disk", "host": None, "subject": "space"},
     "[bkd backup1] bkd: backup disk: space"),
    ("test", {}, "[bkd backup1] test notification"),
])
def test_a_subject_a_person_can_triage_from_a_phone(event, alert, line):
    assert subject_line(Notification("k", event, alert, "backup1")) == line


def test_the_webhook_body_carries_event_alert_server_version_and_key_and_is_signed():
    head = {"id": 41, "hash": "ab" * 32}  # the audit log's newest entry: a copy off the server
    body = webhook_body(Notification("bkd-ab-7-opened-chat", "opened", ALERT, "backup1", head))
    assert json.loads(body) == {"event": "opened", "alert": ALERT, "server": "backup1", "version": __version__,
                                "idempotency_key": "bkd-ab-7-opened-chat",
                                "text": "[bkd backup1] web1: run failed (3×)", "audit_head": head}
    assert signature(b"s3cret", body) == "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()


@pytest.mark.parametrize("url, suffix, expected", [
    ("https://hc-ping.com/5f0e", "start", "https://hc-ping.com/5f0e/start"),
    ("https://hc-ping.com/5f0e/", "fail", "https://hc-ping.com/5f0e/fail"),
    ("https://hc-ping.com/5f0e", "", "https://hc-ping.com/5f0e"),
    ("https://hc-ping.com/key/web1?create=1", "start", "https://hc-ping.com/key/web1/start?create=1"),
])
def test_ping_urls_follow_the_healthchecks_convention(url, suffix, expected):
    assert ping_url(url, suffix) == expected


@pytest.mark.parametrize("status, delivered, permanent", [
    (200, True, False), (204, True, False), (400, False, True), (403, False, True), (404, False, True),
    (408, False, False), (429, False, False), (500, False, False), (503, False, False), (301, False, False)])
def test_2xx_is_delivered_4xx_but_408_and_429_is_permanent_the_rest_is_retried(status, delivered, permanent):
    from bkd.notify import http
    assert (http.delivered(status), http.permanent(status)) == (delivered, permanent)
