"""The digest's pure parts: when the daily report is due, days in the
report's zone, how hosts are judged by `bkctl check`, and the renderings."""

import re
from datetime import date, datetime, time, timezone
from zoneinfo import ZoneInfo

import pytest

from bkctl import check, report
from bkctl.fmt import parse_span, sparkline
from bkd.views.report import due_day, next_time, trend

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
LA = ZoneInfo("America/Los_Angeles")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


@pytest.mark.parametrize("now, zone, last, due", [
    ("2026-05-01T06:59:59+00:00", UTC, None, None),  # not yet
    ("2026-05-01T07:00:00+00:00", UTC, None, "2026-05-01"),  # on the dot
    ("2026-05-01T15:00:00+00:00", UTC, "2026-04-30", "2026-05-01"),  # bkd was down at 07:00: sent when it starts
    ("2026-05-01T15:00:00+00:00", UTC, "2026-05-01", None),  # sent today already
    ("2026-05-01T05:30:00+00:00", BERLIN, None, "2026-05-01"),  # 07:30 in Berlin (summer time)
    ("2026-05-01T04:30:00+00:00", BERLIN, None, None),  # 06:30 in Berlin
    ("2026-05-01T03:00:00+00:00", LA, "2026-04-29", "2026-04-30"),  # 20:00 the day before in Los Angeles
])
def test_the_daily_report_is_due_once_a_local_day_after_its_time(now, zone, last, due):
    assert due_day(at(now), time(7, 0), zone, last) == due


def test_the_next_report_time_follows_the_zone_across_a_dst_change():
    # 2026-03-29: Berlin moves from UTC+1 to UTC+2 at 02:00 UTC+1.
    assert next_time(at("2026-03-28T07:00:00+00:00"), time(7, 0), BERLIN) == at("2026-03-29T07:00:00+02:00")
    assert next_time(at("2026-03-27T05:59:00+00:00"), time(7, 0), BERLIN) == at("2026-03-27T07:00:00+01:00")
    assert next_time(at("2026-05-01T07:00:00+00:00"), time(7, 0), UTC) == at("2026-05-02T07:00:00+00:00")


def test_trend_days_are_days_of_the_reports_zone():
    rows = [{"name": "2026-04-30_223000", "bytes": 5, "changed_files": 2, "duration_s": 3.0},  # 00:30 in Berlin
            {"name": "2026-05-01_080000", "bytes": 7, "changed_files": 1, "duration_s": 9.5, "space": 70},
            {"name": "2026-05-01_090000", "bytes": None, "changed_files": None, "duration_s": None, "space": None},
            {"name": "not-a-snapshot", "bytes": 1, "changed_files": 1, "duration_s": 1}]
    days = [date(2026, 4, 30), date(2026, 5, 1)]
    assert trend(rows, days, UTC) == [
        {"day": "2026-04-30", "snapshots": 1, "bytes": 5, "space": None, "changed_files": 2, "duration_s": 3.0},
        {"day": "2026-05-01", "snapshots": 2, "bytes": 7, "space": 70, "changed_files": 1, "duration_s": 9.5}]
    assert trend(rows, days, BERLIN) == [
        {"day": "2026-04-30", "snapshots": 0, "bytes": None, "space": None, "changed_files": None,
         "duration_s": None},
        {"day": "2026-05-01", "snapshots": 3, "bytes": 7, "space": 70, "changed_files": 3, "duration_s": 9.5}]


# ---- a digest to judge and render -----------------------------------------------------

def host(name, age=600, stale=False, result="ok", alerts=(), history=True, **extra):
    days = [f"2026-04-{d:02d}" for d in range(2, 31)] + ["2026-05-01"]
    return {"name": name, "last_snapshot": "2026-05-01_115000" if age is not None else None,
            "last_snapshot_time": "2026-05-01T11:50:00Z" if age is not None else None, "age_s": age,
            "stale": stale, "stale_after_s": 7200, "last_result": result, "last_attempt": "2026-05-01T11:50:00Z",
            "consecutive_failures": int(result == "failed"), "readable": True,
            "bytes": 2_000_000 if age is not None else None, "files": 40, "changed_files": 3,
            "duration_s": 12.25 if age is not None else None, "snapshots": 30,
            "tiers": {"latest": 1, "hourly": 29}, "archives": 2, "monthly": 1,
            "period": {"runs": {"ok": 23, "failed": 1}, "snapshots": 23, "changed_files": 80},
            "alerts": list(alerts),
            "trend": [{"day": d, "snapshots": 24 if history else 0, "bytes": (i + 1) * 1000 if history else None,
                       "changed_files": 5 if history else None, "duration_s": 10.0 if history else None}
                      for i, d in enumerate(days)], **extra}


def alert(kind, host_name="db1", state="open", silenced=False, subject=None):
    return {"id": 1, "kind": kind, "host": host_name, "subject": subject, "state": state, "count": 3,
            "first_seen": "2026-05-01T09:00:00Z", "last_seen": "2026-05-01T11:00:00Z", "silenced": silenced}


def digest(*hosts, server_alerts=()):
    current = [a for h in hosts for a in h["alerts"]] + list(server_alerts)
    return {"generated": "2026-05-01T12:00:00Z", "since": "2026-04-30T12:00:00Z", "period_s": 86400,
            "server": "backup1", "version": "1.0", "timezone": "UTC", "trend_days": 30, "hosts": list(hosts),
            "alerts": {"open": len(current), "unacknowledged": sum(a["state"] == "open" for a in current),
                       "silenced": 0, "by_kind": {}, "current": current},
            "disk": {"total_bytes": 10**12, "free_bytes": 4 * 10**11, "used_bytes": 6 * 10**11, "used_percent": 60.0,
                     "total_inodes": 10**6, "free_inodes": 9 * 10**5, "days_to_full": 80.5, "full_by": "2026-07-20",
                     "trend": [{"day": "2026-05-01", "used_bytes": 6 * 10**11}]}}


@pytest.mark.parametrize("hosts, server_alerts, named, thresholds, code, words", [
    ([host("web1")], [], False, {}, 0, "1 host ok, newest snapshot 10m old, oldest 10m old"),
    ([host("web1", stale=True, age=9000)], [], False, {}, 2, "web1 stale (last snapshot 2h ago)"),
    ([host("db1", age=None, result=None, stale=True)], [], False, {}, 2, "db1 never backed up"),
    ([host("db1", age=None, result=None)], [], False, {}, 0, "1 host ok"),  # new: not stale yet
    ([host("web1", age=4000)], [], False, {"warn_age": 3600}, 1, "web1 last snapshot 1h ago"),
    ([host("web1", age=4000)], [], False, {"warn_age": 600, "crit_age": 3600}, 2, "web1 stale"),
    ([host("web1", age=4000, stale=True)], [], False, {"crit_age": 7200}, 0, "1 host ok"),  # the caller's rule
    ([host("db1", alerts=[alert("run_failed")])], [], False, {}, 2, "db1 run_failed alert"),
    ([host("db1", alerts=[alert("auth", state="acked")])], [], False, {}, 2, "db1 auth alert (acknowledged)"),
    ([host("db1", alerts=[alert("integrity", subject="2026-04-30_120000")])], [], False, {}, 2,
     "db1 integrity 2026-04-30_120000 alert"),
    ([host("db1", alerts=[alert("hung")])], [], False, {}, 1, "db1 hung alert"),
    ([host("db1", alerts=[alert("hung", state="acked")])], [], False, {}, 0, "1 host ok"),
    ([host("db1", alerts=[alert("run_failed", silenced=True)])], [], False, {}, 0, "1 host ok"),
    ([host("web1")], [alert("disk", None, subject="space")], False, {}, 1, "disk space alert"),
    ([host("web1")], [alert("disk", None, subject="space")], True, {}, 0, "1 host ok"),  # HOST named
    ([host("web1", readable=False)], [], False, {}, 2, "web1 directory unreadable"),
    # Held after an anomaly: critical, whatever its alert's state, until an admin releases it.
    ([host("db1", held=True, suspects=["2026-05-01_110000"], alerts=[alert("anomaly", state="acked")])], [], False,
     {}, 2, "db1 held after an anomaly (1 suspect snapshots; bkctl holds)"),
    ([host("db1", alerts=[alert("anomaly", subject="2026-05-01_110000")])], [], False, {}, 1,
     "db1 anomaly 2026-05-01_110000 alert"),  # suspect, not held (hold = false): a warning
])
def test_check_judges_hosts_and_alerts(hosts, server_alerts, named, thresholds, code, words):
    got, line = check.evaluate(digest(*hosts, server_alerts=server_alerts), named, **thresholds)
    assert got == code and line.startswith(f"BKD {check.NAMES[code]} - ") and words in line, line


def test_check_perfdata_follows_the_plugin_format():
    _, line = check.evaluate(digest(host("web1"), host("db1", age=None, result=None)), False, warn_age=3600)
    assert line.split(" | ")[1] == ("web1_age=600s;3600;7200;0; web1_size=2000000B;;;0; web1_duration=12.25s;;;0; "
                                    "db1_age=U;3600;7200;0; db1_size=U;;;0; db1_duration=U;;;0;")


def test_the_renderings_name_every_host_and_load_nothing():
    d = digest(host("web1"), host("db1", age=None, result="failed", history=False, alerts=[alert("run_failed")]))
    assert report.summary(d) == "[bkd backup1] report: 2 hosts, 1 failing or stale, 1 alert"
    assert report.summary(digest(host("web1"))) == "[bkd backup1] report: 1 host, all ok"
    text = report.text(d)
    assert "web1" in text and "db1" in text and "failing" in text and "▁" in text
    assert "full in about 80.5 days (2026-07-20)" in text
    assert not set(report.text(d, ascii=True)) - set(map(chr, range(128)))
    page, mail = report.page_html(d), report.mail_html(d)
    assert page.count('<svg class="trend" data-host="web1"') == 3 and 'data-host="db1"' not in page
    assert page.count('data-metric="disk"') == 1 and f'content="{report.CSP}"' in page
    assert "<svg" not in mail and "Content-Security-Policy" not in mail
    for html in (page, mail):
        assert not re.search(r"(?i)\b(?:https?|ftp):|\bsrc=|\bhref=|url\(|<script|<link|@import", html)
        assert "<td>web1</td>" in html and "<td>db1</td>" in html and "no snapshots in the last 30 days" in html
    # A day's bar is as tall as its value against the highest (30 days: 1000 … 30000 bytes).
    assert '<div style="height:40px;background:#3b7dd8">' in mail and "height:1px;background:#3b7dd8" in mail


def test_names_are_escaped_in_html():
    d = digest(host("web1", alerts=[alert("integrity", "web1", subject="<b>&")]))
    assert "<b>&" not in report.page_html(d) and "&lt;b&gt;&amp;" in report.page_html(d)


def test_spans_and_sparklines():
    assert parse_span("90s") == 90 and parse_span("1h30m") == 5400 and parse_span("2d") == 172800
    for bad in ("", "1x", "h", "1.5h"):
        with pytest.raises(ValueError):
            parse_span(bad)
    assert sparkline([0, 1, 2, 4, None, 8]) == "▁▂▃▅ █"
    assert sparkline([None, None]) == "  " and sparkline([0, 0]) == "▁▁"
    assert sparkline([1, 8], ascii=True) == ".@"


@pytest.mark.parametrize("peak, kind, top, ticks", [
    (30_000, "bytes", 51_200, ["0", "25 KiB", "50 KiB"]),
    (3 * 1024**3, "bytes", 5 * 1024**3, ["0", "2.5 GiB", "5 GiB"]),
    (700, "bytes", 1000, ["0", "500 B", "1000 B"]),
    (25, "seconds", 50, ["0", "25s", "50s"]),
    (90, "seconds", 120, ["0", "1m", "2m"]),
    (0.4, "seconds", 0.5, ["0", "0.25s", "0.5s"]),
    (3, "count", 5, ["0", "5"]),  # no tick at 2.5 files
    (17, "count", 20, ["0", "10", "20"]),
    (0, "count", 1, ["0", "1"]),
])
def test_a_charts_y_axis_has_round_ticks_with_units(peak, kind, top, ticks):
    got_top, got_ticks = report.axis(peak, kind)
    assert got_top == top and [label for _, label in got_ticks] == ticks


def test_the_disk_charts_scale_is_the_disk_and_says_so():
    top, ticks = report.axis(6 * 10**11, "bytes", top=10**12)
    assert top == 10**12 and [label for _, label in ticks] == ["0", "465.7 GiB", "931.3 GiB"]


def test_the_charts_name_their_axes_days_and_the_disk_size():
    d = digest(host("web1"))
    d["disk"]["trend"] = [{"day": f"2026-04-{i:02d}", "used_bytes": 6 * 10**11} for i in range(2, 31)]
    page, mail = report.page_html(d), report.mail_html(d)
    assert "peak" not in page and "peak" not in mail
    for html in (page, mail):
        assert "used: 558.8 GiB of 931.3 GiB (the disk&#x27;s size)" in html
        assert ">931.3 GiB<" in html and ">50 KiB<" in html and ">10s<" in html  # tops, with units
        assert ">Apr 2<" in html and ">May 1<" in html  # the days on the x axis
    web1_size = page.split('data-host="web1" data-metric="bytes"')[1].split("</svg>")[0]
    assert [t for t in re.findall(r">([^<>]+)</text>", web1_size)] == ["0", "25 KiB", "50 KiB", "Apr 2", "Apr 17",
                                                                      "May 1"]
    assert "size (logical) per day (last: 29.3 KiB)" in page  # a history from before the index: no space yet


def test_a_held_host_and_its_suspect_snapshots_are_in_the_text_and_the_page():
    d = digest(host("web1", held=True, suspects=["2026-05-01_110000"]), host("db1"))
    text = report.text(d)
    assert "web1: held after an anomaly: suspect snapshot 2026-05-01_110000 (bkctl holds)" in text
    assert report.verdict(d["hosts"][0]) == ("held", "bad")
    for html in (report.page_html(d), report.mail_html(d)):
        assert "<b>held after an anomaly: suspect snapshot 2026-05-01_110000</b>" in html
