"""Times as people read them (fmt.timestamp): local time with its zone, UTC with
--utc, and the report in its own `[report] timezone` — whatever the TZ of the
process that renders it (bkctl's or the daemon's)."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from bkctl import fmt, report
from test_report_view import alert, digest, host


@pytest.fixture
def tz(monkeypatch):
    """tz(NAME): this process's local time zone is NAME (as TZ=NAME would make it)."""
    def set_zone(name: str) -> None:
        monkeypatch.setenv("TZ", name)
        time.tzset()
    yield set_zone
    monkeypatch.undo()
    time.tzset()
    fmt.use_utc(False)


@pytest.mark.parametrize("zone, winter, summer", [
    ("Europe/Berlin", "2026-12-07 16:31:09 CET", "2026-07-07 17:31:09 CEST"),
    ("Asia/Kolkata", "2026-12-07 21:01:09 IST", "2026-07-07 21:01:09 IST"),
    ("America/Sao_Paulo", "2026-12-07 12:31:09 -03", "2026-07-07 12:31:09 -03"),  # a zone without a name: its offset
    ("UTC", "2026-12-07 15:31:09 UTC", "2026-07-07 15:31:09 UTC"),
])
def test_a_time_is_shown_in_local_time_with_its_zone(tz, zone, winter, summer):
    tz(zone)
    assert fmt.timestamp("2026-12-07T15:31:09Z") == winter
    assert fmt.timestamp("2026-07-07T15:31:09.250Z") == summer  # milliseconds (job records) are not shown
    assert fmt.timestamp(datetime(2026, 12, 7, 15, 31, 9, tzinfo=timezone.utc)) == winter
    assert fmt.timestamp(None) == "-"


def test_utc_shows_every_time_in_utc_also_where_a_zone_was_asked_for(tz):
    tz("Europe/Berlin")
    fmt.use_utc(True)
    assert fmt.timestamp("2026-12-07T15:31:09Z") == "2026-12-07 15:31:09 UTC"
    assert fmt.timestamp("2026-12-07T15:31:09Z", ZoneInfo("Asia/Kolkata")) == "2026-12-07 15:31:09 UTC"
    fmt.use_utc(False)
    assert fmt.timestamp("2026-12-07T15:31:09Z", ZoneInfo("Asia/Kolkata")) == "2026-12-07 21:01:09 IST"


def test_the_report_shows_its_times_in_its_own_zone_whatever_the_local_one(tz):
    tz("America/Los_Angeles")
    d = {**digest(host("web1"), host("db1", alerts=[alert("run_failed")])), "timezone": "Europe/Berlin"}
    text = report.text(d)
    assert text.startswith("bkd report for backup1 at 2026-05-01 14:00:00 CEST ")
    assert "db1 run_failed: open, 3x since 2026-05-01 11:00:00 CEST" in text
    for html in (report.page_html(d), report.mail_html(d)):
        assert "2026-05-01 14:00:00 CEST" in html and "<td>2026-05-01 11:00:00 CEST</td>" in html
        assert "2026-05-01T12:00:00Z" not in html
    fmt.use_utc(True)  # bkctl report --utc
    assert report.text(d).startswith("bkd report for backup1 at 2026-05-01 12:00:00 UTC ")


def test_a_report_zone_this_machine_does_not_know_is_shown_as_utc(tz):
    tz("Europe/Berlin")
    d = {**digest(host("web1")), "timezone": "Mars/Olympus_Mons"}
    assert report.text(d).startswith("bkd report for backup1 at 2026-05-01 12:00:00 UTC ")
