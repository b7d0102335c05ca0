"""A reload never changes a running plan, and a lower limit holds at once."""

from datetime import datetime

from conftest import make_tree, slow_source, wait_until


def _time(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_a_reload_that_removes_hosts_lets_the_running_run_finish_and_skips_the_queued_one(tmp_path, daemon_factory):
    daemon = daemon_factory([{"name": "busy", "source": str(slow_source(tmp_path / "busy", 3)),
                              "rsync": {"bwlimit": "1500"}, "pre": "echo PGPASSWORD=hunter2 pg_dumpall"},
                             {"name": "waiting", "source": str(make_tree(tmp_path / "waiting", 3))}],
                            max_parallel_hosts=1).start()
    job_id = daemon.call("job.start", hosts=["busy", "waiting"])["job_id"]
    wait_until(lambda: daemon.call("status")["hosts"]["busy"]["stage"] == "snapshot", 20, what="busy to run")
    assert daemon.call("status")["hosts"]["waiting"]["state"] == "queued"
    daemon.config["host"] = []
    daemon.write_config()
    assert daemon.call("config.reload")["changes"] == ["host busy removed", "host waiting removed"]

    job = daemon.wait_job(job_id)
    runs = {run["host"]: run for run in job["hosts"]}
    assert runs["busy"]["status"] == "ok" and runs["busy"]["snapshot"], runs["busy"]  # its whole plan, prune too
    assert (daemon.workdir / "backup/busy/latest/big.bin").exists()
    assert runs["waiting"]["status"] == "skipped" and "removed" in runs["waiting"]["error"]
    assert daemon.call("alerts.list")["alerts"] == []  # nothing failed
    log = daemon.log()
    assert "internal error" not in log and "Traceback" not in log and "exception" not in log


def test_a_lower_max_parallel_hosts_holds_from_the_reload_on(tmp_path, daemon_factory):
    hosts = [{"name": f"h{i}", "source": str(slow_source(tmp_path / f"s{i}", 2)), "rsync": {"bwlimit": "1000"}}
             for i in (1, 2, 3)]
    daemon = daemon_factory(hosts, max_parallel_hosts=2).start()
    job_id = daemon.call("job.start")["job_id"]
    wait_until(lambda: sum(h["state"] == "running" for h in daemon.call("status")["hosts"].values()) == 2,
               20, what="two hosts to run")
    daemon.config["max_parallel_hosts"] = 1
    daemon.write_config()
    assert daemon.call("config.reload")["ok"]
    runs = {run["host"]: run for run in daemon.wait_job(job_id)["hosts"]}
    assert all(run["status"] == "ok" for run in runs.values())
    first_two = sorted(runs.values(), key=lambda r: r["started"])[:2]
    third = sorted(runs.values(), key=lambda r: r["started"])[2]
    # Nothing running was stopped, and the third waited until fewer than one ran: after both.
    assert _time(third["started"]) >= max(_time(run["finished"]) for run in first_two)


def test_a_host_added_by_a_reload_is_watched_at_once_not_after_the_freshness_loops_minute(tmp_path, daemon_factory):
    """The freshness loop slept up to a minute (its interval of the hosts it
    had when it went to sleep: none here), so a host added by a reload — or
    a replicated host learned of — went unwatched that long."""
    daemon = daemon_factory([]).start()
    daemon.config["host"] = [{"name": "new", "source": str(tmp_path / "missing"),
                              "schedule": {"snapshot_every": "1s", "stale_factor": 1}}]
    daemon.write_config()
    assert daemon.call("config.reload")["changes"] == ["host new added"]
    wait_until(lambda: any(a["kind"] == "stale" and a["host"] == "new" for a in daemon.call("alerts.list")["alerts"]),
               20, what="the new host's stale alert")
