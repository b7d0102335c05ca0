"""The TUI's view model, without curses."""

from datetime import datetime, timezone

from bkctl.tui import ViewModel, progress_bar

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)


def status():
    host = {"state": "idle", "stage": None, "progress": None, "last_snapshot": "2026-05-01_110000",
            "last_snapshot_time": "2026-05-01T11:00:00Z", "last_result": "ok", "last_error": None,
            "next_run": "2026-05-01T12:30:00Z", "job_id": None}
    return {"hosts": {"web1": dict(host), "db1": dict(host), "web2": dict(host)},
            "started": "2026-05-01T09:00:00Z", "version": "1.0",
            "disk": {"free_bytes": 2 * 2**30, "total_bytes": 8 * 2**30}}


def test_header_and_rows():
    model = ViewModel()
    model.apply_status(status())
    assert model.header(NOW) == "bkd 1.0  up 3h  free 2.0 GiB of 8.0 GiB  running 0/3  next in 30m"
    rows = model.rows(NOW)
    assert rows[0].split()[:3] == ["HOST", "STATE", "STAGE"]
    assert [r.split()[0] for r in rows[1:]] == ["db1", "web1", "web2"]
    assert all(len(r) <= 80 for r in rows)
    assert "1h" in rows[1] and rows[1].endswith(" ok")


def test_events_update_the_rows_and_a_finished_run_asks_for_fresh_status():
    model = ViewModel()
    model.apply_status(status())
    assert not model.apply_event({"topic": "host", "host": "web1", "status": "running", "stage": "snapshot",
                                  "job_id": 7})
    assert not model.apply_event({"topic": "progress", "host": "web1", "stage": "snapshot",
                                  "progress": {"percent": 40, "bytes": 400, "rate": 2048, "eta_s": 90}})
    row = model.rows(NOW, width=100)[2]
    assert "running" in row and "snapshot" in row and "40%" in row and "2.0 K/s" in row and "1m" in row
    assert model.apply_event({"topic": "host", "host": "web1", "status": "failed", "error": "boom"})
    assert model.hosts["web1"]["state"] == "idle" and model.hosts["web1"]["last_result"] == "failed"
    assert model.apply_event({"topic": "unknown-host-event", "host": "nope"}) is False


def test_filter_and_selection_stay_in_range():
    model = ViewModel()
    model.apply_status(status())
    model.move(10)
    assert model.current() == "web2"
    model.filter = "db"
    model.clamp()
    assert model.visible() == ["db1"] and model.current() == "db1"
    model.filter = "zzz"
    model.clamp()
    assert model.current() is None and model.detail_lines() == ["no hosts match /zzz"]


def test_progress_bar():
    assert progress_bar(0, 10) == "[..........]"
    assert progress_bar(55, 10) == "[######....]"
    assert progress_bar(150, 4) == "[####]"


def test_the_alerts_pane_follows_alert_events_unacknowledged_first():
    model = ViewModel()
    model.apply_alerts([{"id": 1, "host": "web1", "kind": "stale", "count": 1, "state": "acked",
                         "last_seen": None, "message": "old"}])
    base = {"topic": "alert", "host": "db1", "kind": "run_failed", "state": "open", "last_seen": None,
            "message": "snapshot run failed"}
    model.apply_event({**base, "event": "opened", "id": 2, "count": 1})
    model.apply_event({**base, "event": "repeated", "id": 2, "count": 3})
    lines = model.alert_lines(datetime(2024, 1, 1, tzinfo=timezone.utc))
    assert lines[0] == "alerts: 2 current, 1 unacknowledged"
    assert lines[1].split()[:5] == ["2", "db1", "run_failed", "3x", "open"] and "web1" in lines[2]
    assert model.alerts == {"web1": 1, "db1": 1} and model.open_alert_ids("db1") == [2]
    model.apply_event({**base, "event": "resolved", "id": 2, "state": "resolved"})
    assert model.alerts == {"web1": 1} and model.open_alert_ids("web1") == []


def digest():
    trend = [{"day": f"2026-04-{d:02d}", "snapshots": 24, "bytes": d * 100, "space": d * 10, "changed_files": 1,
              "duration_s": 1.0} for d in range(2, 31)] + [{"day": "2026-05-01", "snapshots": 0, "bytes": None,
                                                           "space": None, "changed_files": None, "duration_s": None}]
    web1 = {"name": "web1", "snapshots": 212, "tiers": {"latest": 1, "hourly": 180, "daily": 30, "monthly": 1},
            "archives": 3, "monthly": 2, "bytes": 5 * 2**30, "files": 123456, "unique_bytes": 3 * 2**29,
            "trend": trend, "monthly_copies": ["monthly/2026-03", "monthly/2026-04"],
            "archive_copies": [f"archive/web1_2026-04-{d}_000000.tar.zst" for d in (28, 29, 30)]}
    db1 = {**web1, "name": "db1", "tiers": {"expired": 2}, "archives": 0, "monthly": 0, "bytes": None,
           "files": None, "unique_bytes": None, "monthly_copies": [], "archive_copies": [],
           "trend": [{**day, "snapshots": 0, "bytes": None, "space": None} for day in trend]}
    return {"hosts": [web1, db1]}


def test_host_cards_show_tiers_archives_size_and_30_days_of_sizes():
    model = ViewModel()
    model.apply_status(status())
    model.apply_report(digest())
    *facts, spark = model.card_facts("web1")
    assert facts == ["tiers: hourly 180 daily 30 monthly 1", "archives 3, newest 2026-04-30_000000",
                     "monthly copies 2: 2026-03, 2026-04", "size 5.0 GiB, 123,456 files",
                     "on disk 1.5 GiB, 30d: on disk"]
    # one mark a day, growing with the space on disk, a gap for today (no snapshot yet)
    assert spark.startswith("30d ▁") and spark.endswith("█ ") and len(spark) == 4 + 30
    assert list(spark[4:-1]) == sorted(spark[4:-1])
    assert model.card_facts("db1")[0] == "tiers: hourly 0 daily 0 monthly 0 expired 2"
    assert model.card_facts("web2") == ["(no digest yet)"]
    cards = model.card_lines(NOW, 130)
    assert len(cards) == 9 and all(len(line) <= 130 for line in cards)  # three cards side by side
    assert cards[0].startswith("┌─>db1 ") and " web1 " in cards[0] and " web2 " in cards[0]
    assert "tiers: hourly 180 daily 30 monthly 1" in cards[2]
    assert len(model.card_lines(NOW, 50)) == 9 + 9 + 4  # one a row on a narrow screen (web2: no digest yet)
    model.unicode = False
    ascii_cards = model.card_lines(NOW, 130)
    assert ascii_cards[0].startswith("+->db1 ") and all(ord(c) < 128 for line in ascii_cards for c in line)
    assert "db1: last snapshot" in model.detail_lines()[0] and "tiers:" in "".join(model.detail_lines())


def test_a_held_host_says_so_in_its_row_card_and_detail_and_an_anomaly_alert_asks_for_fresh_status():
    model = ViewModel()
    state = status()
    state["hosts"]["web1"].update(held=True, suspects=["2026-05-01_110000"])
    model.apply_status(state)
    assert model.rows(NOW, width=100)[2].endswith(" ok HELD") and not model.rows(NOW)[1].endswith("HELD")
    assert "│ HELD, 1 suspect snapshot(s) " in "\n".join(model.card_lines(NOW, 120))
    model.selected = 1
    model.detail = {"host": "web1", "jobs": [], "snapshots": [
        {"name": "2026-05-01_110000", "tier": "latest", "files": 3, "changed_files": 3, "suspect": True}]}
    detail = "\n".join(model.detail_lines())
    assert "HELD, 1 suspect snapshot(s) after an anomaly" in detail
    assert "2026-05-01_110000  latest" in detail and "SUSPECT" in detail
    assert model.apply_event({"topic": "alert", "event": "resolved", "id": 4, "kind": "anomaly", "host": "web1"})
    assert not model.apply_event({"topic": "alert", "event": "opened", "id": 5, "kind": "stale", "host": "web1"})
