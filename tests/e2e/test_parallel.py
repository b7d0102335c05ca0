"""Hosts run in parallel; a slow host never holds the others back."""

import os
from datetime import datetime

from conftest import make_tree


def test_three_hosts_run_in_parallel_and_the_slow_one_finishes_last(tmp_path, daemon_factory):
    fast1 = make_tree(tmp_path / "fast1", 20)
    fast2 = make_tree(tmp_path / "fast2", 20)
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    daemon = daemon_factory([
        {"name": "slow", "source": str(slow), "rsync": {"bwlimit": "1000"}},
        {"name": "fast1", "source": str(fast1)},
        {"name": "fast2", "source": str(fast2)},
    ], max_parallel_hosts=3, archive={"enabled": False}, monthly={"enabled": False}).start()

    job = daemon.run_snapshot()
    assert job["status"] == "ok"
    runs = {h["host"]: (datetime.fromisoformat(h["started"]), datetime.fromisoformat(h["finished"]))
            for h in job["hosts"]}
    assert runs["fast1"][1] < runs["slow"][1] and runs["fast2"][1] < runs["slow"][1]
    # All three overlapped: each started before any of them finished.
    assert max(start for start, _ in runs.values()) <= min(end for _, end in runs.values())


def test_a_failing_host_does_not_stop_the_others(tmp_path, daemon_factory):
    good = make_tree(tmp_path / "good", 5)
    daemon = daemon_factory([{"name": "good", "source": str(good)},
                             {"name": "bad", "source": str(tmp_path / "missing")}]).start()
    job = daemon.run_snapshot()
    statuses = {h["host"]: h["status"] for h in job["hosts"]}
    assert statuses == {"good": "ok", "bad": "failed"} and job["status"] == "failed"
    assert (daemon.workdir / "backup/good/latest").exists()


def test_dry_run_writes_nothing_and_reports_what_would_change(tmp_path, daemon_factory):
    source = make_tree(tmp_path / "src", 7)
    daemon = daemon_factory([{"name": "web1", "source": str(source)}]).start()
    result = daemon.bkctl("run", "--dry-run", "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    job = daemon.call("job.get", job_id=daemon.call("jobs.list")["jobs"][0]["job_id"])["job"]
    assert job["dry_run"] and job["hosts"][0]["stats"]["changed_files"] == 7
    assert not (daemon.workdir / "backup" / "web1").exists()
    assert daemon.call("status")["hosts"]["web1"]["last_result"] is None  # a dry run is not a result
