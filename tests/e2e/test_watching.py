"""Watching end to end, with intervals of seconds: one episode for a run of
failures, its opening, reminders and one recovery at a webhook; ack and
silence; hung, disk and stale alerts; where open alerts show."""

import asyncio
import time
from datetime import timedelta

from bkd.infra import clock
from bkd.state.store import DATABASE_NAME, Store
from conftest import make_tree, wait_until
from receivers import HttpReceiver
from test_lifecycle import slow_source


def _for(receiver: HttpReceiver, alert_id: int) -> list[str]:
    return [n["event"] for n in receiver.notifications() if n["alert"]["id"] == alert_id]


def test_a_failing_host_is_one_episode_with_one_opening_reminders_and_one_recovery(tmp_path, daemon_factory):
    hook = HttpReceiver()
    web1 = tmp_path / "web1"
    daemon = daemon_factory(
        [{"name": "web1", "source": str(web1), "schedule": {"enabled": True, "snapshot_every": "1s", "stale_factor": 1000}},
         {"name": "db1", "source": str(tmp_path / "db1")}],
        alerts={"remind_every": "3s", "retry_after": "1s"},
        notify=[{"name": "chat", "type": "webhook", "url": hook.url()}]).start()
    # db1 is in maintenance: its failures are recorded, nobody is told.
    assert daemon.bkctl("alerts", "silence", "db1", "--for", "1h", "--note", "disk swap").returncode == 0
    daemon.run_snapshot("db1")
    daemon.run_snapshot("db1")

    wait_until(lambda: (_alert(daemon, "web1") or {}).get("count", 0) >= 8, 30, what="8 failed runs")
    episode = _alert(daemon, "web1")
    wait_until(lambda: _for(hook, episode["id"]).count("reminder") >= 2, 10, what="two reminders")
    (only,) = [a for a in daemon.bkctl_json("alerts")["alerts"] if a["host"] == "web1"]  # one episode
    events = _for(hook, episode["id"])
    assert events[0] == "opened" and set(events[1:]) == {"reminder"}
    assert len(events) - 1 <= (time.time() - clock_seconds(episode["first_seen"])) / 3 + 1

    # An ack holds: no more reminders while the failures go on counting.
    assert daemon.bkctl("alerts", "ack", "--host", "web1", "--note", "looking").returncode == 0
    sent = len(_for(hook, episode["id"]))
    count = _alert(daemon, "web1")["count"]
    time.sleep(7)
    acked = _alert(daemon, "web1")
    assert (acked["state"], acked["acked_by"], acked["note"]) == ("acked", "root", "looking") and acked["acked_at"]
    assert acked["count"] > count and len(_for(hook, episode["id"])) == sent

    make_tree(web1, 3)  # the next good run resolves it: exactly one recovery
    wait_until(lambda: _alert(daemon, "web1") is None, 15, what="the recovery")
    wait_until(lambda: _for(hook, episode["id"])[-1:] == ["resolved"], 10, what="the recovery notification")
    time.sleep(2)
    assert _for(hook, episode["id"]).count("resolved") == 1 and _for(hook, episode["id"])[-1] == "resolved"

    db1 = _alert(daemon, "db1")
    assert db1["count"] == 2 and db1["silenced"] is True and _for(hook, db1["id"]) == []
    listing = daemon.bkctl("alerts").stdout
    assert "open (silenced)" in listing and "silenced: host db1 until" in listing and "(disk swap)" in listing
    # Once the silence ends, what it held back and is still open is told.
    assert daemon.bkctl("alerts", "unsilence", "db1").returncode == 0
    wait_until(lambda: _for(hook, db1["id"]) == ["opened"], 10, what="the opening after the silence")
    assert daemon.bkctl("alerts", "unsilence", "db1").returncode == 1  # none in force any more
    hook.stop()


def clock_seconds(text: str) -> float:
    from datetime import datetime
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _alert(daemon, host: str, kind: str | None = None) -> dict | None:
    return next((a for a in daemon.bkctl_json("alerts")["alerts"]
                 if a["host"] == host and (kind is None or a["kind"] == kind)), None)


def test_silence_takes_a_host_or_a_kind_and_a_duration(tmp_path, daemon_factory):
    daemon = daemon_factory([{"name": "web1", "source": str(tmp_path / "s")}]).start()
    usage = daemon.bkctl("alerts", "silence", "web1")
    assert usage.returncode == 2 and "--for DURATION" in usage.stderr
    assert daemon.bkctl("alerts", "silence", "--for", "1h").returncode == 2
    bad = daemon.bkctl("alerts", "silence", "web1", "--for", "soon")
    assert bad.returncode == 1 and "for" in bad.stderr and "invalid duration" in bad.stderr
    assert daemon.bkctl("alerts", "silence", "nosuch", "--for", "1h").returncode == 1
    kind = daemon.bkctl_json("alerts", "silence", "--kind", "stale", "--for", "2h")
    assert (kind["silence"]["host"], kind["silence"]["kind"], kind["silence"]["by"]) == (None, "stale", "root")
    assert "silenced kind disk until" in daemon.bkctl("alerts", "silence", "--kind", "disk", "--for", "1d").stdout
    assert len(daemon.bkctl_json("alerts")["silences"]) == 2
    audit = [e["method"] for e in daemon.call("audit.list")["entries"]]
    assert audit[:2] == ["alerts.silence", "alerts.silence"]  # newest first: both are audited


def test_alerts_ack_by_kind_takes_the_kind_as_a_string(tmp_path, daemon_factory):
    # Regression: strict params wanted an enum instance, so `alerts ack --kind K` was always refused.
    daemon = daemon_factory([{"name": "web1", "source": str(tmp_path / "missing")}]).start()
    daemon.run_snapshot()
    wait_until(lambda: _alert(daemon, "web1"), 10, what="the alert")
    result = daemon.bkctl("alerts", "ack", "--kind", "run_failed", "--note", "known")
    assert result.returncode == 0, result.stderr
    assert _alert(daemon, "web1")["state"] == "acked"


def test_open_alerts_show_in_status_and_metrics_and_a_hung_run_opens_and_resolves(tmp_path, daemon_factory):
    daemon = daemon_factory([{"name": "web1", "source": str(slow_source(tmp_path / "src", 4))},
                             {"name": "db1", "source": str(tmp_path / "missing")}],
                            rsync={"bwlimit": "500"}, alerts={"hung_after": "1s"}).start()
    daemon.run_snapshot("db1")
    job_id = daemon.call("job.start", hosts=["web1"])["job_id"]
    wait_until(lambda: _alert(daemon, "web1", "hung"), 15, what="the hung alert")
    assert f"job {job_id} is still going after" in _alert(daemon, "web1", "hung")["message"]
    status = daemon.call("status")
    assert status["alerts"]["by_kind"] == {"hung": 1, "run_failed": 1}
    assert status["alerts"]["unacknowledged"] == 2
    assert status["hosts"]["web1"]["alert_kinds"] == ["hung"] and status["hosts"]["db1"]["alerts"] == 1
    human = daemon.bkctl("status").stdout
    assert "alerts: 2 current (2 unacknowledged): hung 1, run_failed 1" in human
    db1_row = next(line for line in human.splitlines() if line.startswith("db1"))
    assert db1_row.rstrip().endswith("run_failed")
    metrics = daemon.call("metrics")["text"]
    assert 'bkd_open_alerts{kind="hung"} 1' in metrics and 'bkd_unacknowledged_alerts{kind="run_failed"} 1' in metrics

    daemon.call("job.cancel", hosts=["web1"])
    wait_until(lambda: _alert(daemon, "web1", "hung") is None, 15, what="the hung alert to resolve")
    assert "alerts: 1 current" in daemon.bkctl("status").stdout


def test_disk_alerts_for_free_space_and_for_the_growth_trend(tmp_path, daemon_factory):
    daemon = daemon_factory([], alerts={"disk_free_percent": 100}).start()
    wait_until(lambda: _alert(daemon, None, "disk"), 15, what="the disk space alert")
    disk = {a["subject"]: a for a in daemon.bkctl_json("alerts")["alerts"]}
    assert sorted(disk) == ["inodes", "space"]  # both are under 100% free
    assert "space free, less than 100%" in disk["space"]["message"]
    assert "inodes free, less than 100%" in disk["inodes"]["message"]
    daemon.stop()

    # Three weeks of samples that grow so fast the disk is full in a few days.
    import os
    stat = os.statvfs(daemon.config["backup_root"])
    free, used = stat.f_bavail * stat.f_frsize, (stat.f_blocks - stat.f_bfree) * stat.f_frsize
    per_day = free / 4

    async def add_samples():
        store = await Store.open(daemon.workdir / "state" / DATABASE_NAME)
        now = clock.now()
        for day in range(21, 0, -1):
            await store.disk.add_sample({"time": clock.iso(now - timedelta(days=day)),
                                         "used_bytes": int(used - per_day * day), "free_bytes": int(free + per_day * day),
                                         "used_inodes": 1000, "free_inodes": 10 ** 6},
                                        clock.iso(now - timedelta(weeks=8)))
        await store.close()

    asyncio.run(add_samples())
    daemon.config["alerts"] = {"disk_free_percent": 0}
    daemon.write_config()
    daemon.start()
    wait_until(lambda: _alert(daemon, None, "disk"), 15, what="the trend alert")
    trend = _alert(daemon, None, "disk")
    assert trend["subject"] == "trend" and "full in about 4" in trend["message"]
    import sqlite3
    with sqlite3.connect(daemon.workdir / "state" / DATABASE_NAME) as db:  # one sample an hour, no more
        assert db.execute("SELECT COUNT(*) FROM disk_samples").fetchone() == (1 + 21,)
    assert [(a["subject"], a["state"]) for a in daemon.bkctl_json("alerts", "--all")["alerts"]] == [
        ("trend", "open"), ("inodes", "resolved"), ("space", "resolved")]  # 0% free is never under


def test_a_host_that_never_succeeded_goes_stale_and_an_ack_holds_until_it_is_fresh(tmp_path, daemon_factory):
    source = tmp_path / "src"
    daemon = daemon_factory([{"name": "web1", "source": str(source),
                              "schedule": {"snapshot_every": "1s", "stale_factor": 2}}]).start()
    wait_until(lambda: _alert(daemon, "web1", "stale"), 15, what="the stale alert")
    stale = _alert(daemon, "web1", "stale")
    assert "no good snapshot since it was added" in stale["message"]
    assert daemon.bkctl("alerts", "ack", str(stale["id"])).returncode == 0
    time.sleep(3)  # many freshness passes: still the same episode, still acknowledged
    (still,) = daemon.bkctl_json("alerts")["alerts"]
    assert (still["id"], still["state"]) == (stale["id"], "acked")
    make_tree(source, 2)
    daemon.run_snapshot()
    wait_until(lambda: _alert(daemon, "web1", "stale") is None, 15, what="fresh again")
    (resolved,) = daemon.bkctl_json("alerts", "--all")["alerts"]
    assert (resolved["id"], resolved["state"]) == (stale["id"], "resolved")
