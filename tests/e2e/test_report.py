"""The fleet digest end to end: `bkctl report` over a real daemon with a month
of history, as JSON, text and a page that headless Chromium renders to a
picture with a chart per host and without a single request; and nothing
in it that a viewer may not see (file names, hook commands, their output)."""

import json
import os
import re
import shutil
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest

import browser
import png
from conftest import make_tree
from receivers import HttpReceiver

FILE_MARK = "PAYROLL-SECRET-7731"  # in a backed-up file's name
HOOK_MARK = "HOOKCMD-4409"  # in a failing pre hook's command line and its output
POST_MARK = "POSTHOOK-5521"  # in a post hook's command line
BAR = (0x3B, 0x7D, 0xD8)  # the host trend bars' colour (bkctl.report.BAR)
GRID = (0xD8, 0xD8, 0xD8)  # the charts' tick lines (bkctl.report.GRID)
DAYS = 30


def plant_history(daemon, host: str, days: int = DAYS - 1, per_day: int = 1) -> list[dict]:
    """Snapshots of the last `days` days, written as bkd writes them (a
    directory under hourly/ and its meta/ record), then listed once so the
    daemon records their statistics in its database (as after a rebuild)."""
    root = daemon.workdir / "backup" / host
    today = datetime.now(timezone.utc).replace(hour=3, minute=0, second=0, microsecond=0)
    planted = []
    for back in range(days, 0, -1):
        for n in range(per_day):
            when = today - timedelta(days=back, hours=-n)
            name = when.strftime("%Y-%m-%d_%H%M%S")
            stats = {"name": name, "time": when.isoformat(), "files": 100 + back, "bytes": 10_000_000 * (40 - back) + n,
                     "unique_bytes": 3_000_000 * (40 - back) + n,
                     "changed_files": 10 + back % 7 + n, "deleted_files": 0, "duration_s": 20.0 + back % 5 + n}
            (root / "hourly" / name).mkdir()
            (root / "meta" / f"{name}.json").write_text(json.dumps(stats))
            planted.append(stats)
    daemon.call("snapshots.list", host=host)
    return planted


def fleet(tmp_path, daemon_factory):
    web1 = make_tree(tmp_path / "web1", 6)
    (web1 / f"{FILE_MARK}.xlsx").write_text("salaries\n")
    daemon = daemon_factory(
        [{"name": "web1", "source": str(web1), "post": f"true {POST_MARK}"},
         {"name": "web2", "source": str(make_tree(tmp_path / "web2", 3))},
         {"name": "db1", "source": str(make_tree(tmp_path / "db1", 2)), "pre": f"echo {HOOK_MARK} >&2; exit 3"}],
        server_name="backup1").start()
    job = daemon.run_snapshot()
    assert {h["host"]: h["status"] for h in job["hosts"]} == {"web1": "ok", "web2": "ok", "db1": "failed"}
    return daemon, job


def test_the_report_shows_every_host_a_month_of_trends_and_nothing_a_viewer_may_not_see(tmp_path, daemon_factory):
    daemon, job = fleet(tmp_path, daemon_factory)
    planted = plant_history(daemon, "web1", per_day=2)
    plant_history(daemon, "web2")
    # The marks are in the daemon's hands: in the admin-only detail of the run and in the snapshot.
    assert HOOK_MARK in json.dumps(daemon.call("job.get", job_id=job["job_id"]))
    assert any(FILE_MARK in e["name"] for e in daemon.call("snapshots.browse", host="web1")["entries"])

    digest = daemon.bkctl_json("report")
    hosts = {h["name"]: h for h in digest["hosts"]}
    assert list(hosts) == ["web1", "web2", "db1"] and digest["server"] == "backup1"
    web1, db1 = hosts["web1"], hosts["db1"]
    assert (web1["last_result"], web1["files"], web1["stale"], web1["alerts"]) == ("ok", 7, False, [])
    assert web1["snapshots"] == 1 + 2 * (DAYS - 1) and web1["tiers"]["latest"] == 1
    assert web1["period"]["runs"] == {"ok": 1} and db1["period"]["runs"] == {"failed": 1}
    assert (db1["last_result"], db1["last_snapshot"], db1["consecutive_failures"]) == ("failed", None, 1)
    assert [a["kind"] for a in db1["alerts"]] == ["run_failed"]
    assert [(a["host"], a["kind"]) for a in digest["alerts"]["current"]] == [("db1", "run_failed")]
    # One entry per day; a day's size is its last snapshot's, its changes summed, its slowest run.
    trend = web1["trend"]
    assert len(trend) == DAYS and trend[-1]["day"] == datetime.now(timezone.utc).date().isoformat()
    assert all(day["snapshots"] == 2 for day in trend[:-1]) and trend[-1]["snapshots"] == 1
    first_day = [p for p in planted if p["name"].startswith(trend[0]["day"])]
    assert trend[0]["bytes"] == first_day[-1]["bytes"]
    assert trend[0]["space"] == first_day[-1]["unique_bytes"]  # the size chart is the real space on disk
    assert trend[0]["changed_files"] == sum(p["changed_files"] for p in first_day)
    assert trend[0]["duration_s"] == max(p["duration_s"] for p in first_day)
    assert all(day["snapshots"] == 0 for day in hosts["db1"]["trend"])
    assert digest["disk"]["total_bytes"] > 0 and digest["disk"]["trend"][-1]["used_bytes"] > 0
    assert digest["disk"]["days_to_full"] is None  # no growth to speak of yet

    text = daemon.bkctl("report")
    assert text.returncode == 0 and all(name in text.stdout for name in hosts)
    page = tmp_path / "report.html"
    written = daemon.bkctl("report", "--html", str(page))
    assert written.returncode == 0 and f"report written to {page}" in written.stdout
    html = page.read_text()
    for rendering in (json.dumps(digest), text.stdout, html):
        for mark in (FILE_MARK, HOOK_MARK, POST_MARK, "xlsx", "exit 3"):
            assert mark not in rendering

    # Self-contained: a policy that forbids loading anything, and no address of any kind in it.
    assert '<meta http-equiv="Content-Security-Policy" content="default-src \'none\';' in html
    assert not re.search(r"(?i)\b(?:https?|ftp|wss?):|//[a-z0-9]|\burl\(|\bsrc=|\bhref=|<script|<link|@import",
                         html)
    assert len(re.findall(r'<svg class="trend" data-host="web1"', html)) == 3
    assert 'data-host="web1" data-metric="space"' in html and "space on disk" in html
    assert 'data-host="db1"' not in html and "no snapshots in the last 30 days" in html

    shot = tmp_path / "report.png"
    assert browser.screenshot(page, shot, tmp_path, size=(1200, 1500)) == []
    # A chart per host with history: the trend bars form one band of rows per host card
    # (its three charts side by side), and db1, without history, has none.
    bands = png.bands(png.rows_with_colour(shot, BAR))
    # (At least 30 px: the tallest bar of a card reaches most of its chart, below a round axis top.)
    assert len(bands) == 2 and all(last - first >= 30 for first, last in bands), bands
    # Readable at a glance: each chart has its y axis's ticks drawn across it (their labels and the
    # days under it are text: checked in the page), and the disk's scale is the disk, not a peak.
    grid = png.rows_with_colour(shot, GRID)
    assert all(len([y for y in grid if first - 3 <= y <= last + 3]) >= 2 for first, last in bands), (bands, grid)
    assert "(the disk&#x27;s size)" in html and "peak" not in html
    assert re.search(r'data-host="web1" data-metric="space".*?>0</text>.*? MiB</text>', html)
    if os.environ.get("BKD_REPORT_PICTURE"):  # how docs/images/report.png is made
        shutil.copy(shot, os.environ["BKD_REPORT_PICTURE"])


def test_the_page_forbids_what_it_does_not_carry(tmp_path, daemon_factory):
    """The harness sees a request when a page makes one, and the report's
    policy stops one that someone slipped in."""
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "s", 2))}]).start()
    daemon.run_snapshot()
    page = tmp_path / "report.html"
    assert daemon.bkctl("report", "--html", str(page)).returncode == 0
    receiver = HttpReceiver()
    probe = f'<img src="{receiver.url("/probe.png")}" width="10" height="10">'
    html = page.read_text().replace("<body>", f"<body>{probe}")
    guarded, open_page = tmp_path / "guarded.html", tmp_path / "open.html"
    guarded.write_text(html)
    open_page.write_text(re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html))
    assert browser.screenshot(guarded, tmp_path / "guarded.png", tmp_path) == []
    assert receiver.requests == []
    assert browser.screenshot(open_page, tmp_path / "open.png", tmp_path) == [receiver.url("/probe.png")]
    assert [r.path for r in receiver.requests] == ["/probe.png"]
    receiver.stop()


def test_report_since_sets_the_period_and_bad_input_is_named(tmp_path, daemon_factory):
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "s", 2))}]).start()
    week = daemon.bkctl_json("report", "--since", "7d")
    assert week["period_s"] == 7 * 86400 and week["trend_days"] == DAYS
    quarter = daemon.bkctl_json("report", "--since", "90d")
    assert quarter["trend_days"] == 90 and len(quarter["hosts"][0]["trend"]) == 90
    for bad, words in (("soon", "invalid duration"), ("400d", "at most 366d")):
        result = daemon.bkctl("report", "--since", bad)
        assert result.returncode == 1 and "since" in result.stderr and words in result.stderr, result.stderr
    unwritable = daemon.bkctl("report", "--html", str(tmp_path / "no" / "such" / "dir.html"))
    assert unwritable.returncode == 1 and "cannot write" in unwritable.stderr
    assert daemon.bkctl("report", "--bogus").returncode == 2


def test_the_report_forecasts_when_the_backup_root_fills_as_the_disk_alert_does(tmp_path, daemon_factory):
    from bkd.watch import disk
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "s", 2))}]).start()
    used = daemon.bkctl_json("report")["disk"]["used_bytes"]
    now = datetime.now(timezone.utc)
    samples = [{"time": (now - timedelta(days=n)).strftime("%Y-%m-%dT%H:%M:%SZ"), "used_bytes": used - n * 2**30,
                "free_bytes": 0, "used_inodes": 0, "free_inodes": 0} for n in (12, 8, 4)]
    with sqlite3.connect(daemon.workdir / "state" / "bkd.sqlite") as db:  # as the hourly sampler keeps them
        db.executemany("INSERT INTO disk_samples VALUES (:time, :used_bytes, :free_bytes, :used_inodes, "
                       ":free_inodes)", samples)
    report = daemon.bkctl_json("report")["disk"]
    current = {"time": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "used_bytes": report["used_bytes"],
               "free_bytes": report["free_bytes"]}
    expected = disk.days_to_full(samples + [current], now)
    assert report["days_to_full"] == pytest.approx(expected, abs=0.2) and report["days_to_full"] > 0
    # days_to_full is rounded and the daemon's now is not ours: near midnight either date is right.
    assert report["full_by"] in {(now + timedelta(days=report["days_to_full"] + slack)).date().isoformat()
                                 for slack in (-0.2, 0, 0.2)}
    days = {day["day"]: day["used_bytes"] for day in report["trend"]}
    assert days[samples[0]["time"][:10]] == samples[0]["used_bytes"]
    assert f"full in about {report['days_to_full']:g} days" in daemon.bkctl("report").stdout


def test_report_statistics_come_from_the_database(tmp_path, daemon_factory):
    """Statistics come from the snapshots table: a snapshot whose meta/ record
    and tree are gone after it was recorded still counts, with its numbers."""
    daemon, _ = fleet(tmp_path, daemon_factory)
    planted = plant_history(daemon, "web2", days=5)
    root = daemon.workdir / "backup" / "web2"
    for record in planted:
        (root / "meta" / f"{record['name']}.json").unlink()
    day = next(d for d in daemon.bkctl_json("report")["hosts"][1]["trend"] if d["snapshots"])
    assert day["bytes"] == planted[0]["bytes"] and day["changed_files"] == planted[0]["changed_files"]
