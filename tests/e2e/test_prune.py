"""Retention through the daemon: dry-run plan, trash, background deletion."""

import json
import os
import subprocess
import time
from datetime import datetime, timezone

import pytest

from conftest import make_tree, wait_until


def test_prune_dry_run_explains_and_prune_moves_to_trash_then_deletes(tmp_path, daemon_factory):
    source = make_tree(tmp_path / "src", 3)
    daemon = daemon_factory([{"name": "web1", "source": str(source)}],
                            retention={"hourly_hours": 24, "daily_days": 7, "monthly_months": 2}).start()
    newest = daemon.run_snapshot()["hosts"][0]["snapshot"]
    hourly = daemon.workdir / "backup/web1/hourly"
    for old in ["2020-01-01_000000", "2020-01-01_050000"]:
        (hourly / old).mkdir()
        (hourly / old / "data").write_text("old\n")
    (hourly / "my-notes").mkdir()  # not bkd's: never touched

    dry = daemon.bkctl("prune", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "web1: keep 2, would delete 2" in dry.stdout
    assert "older than 2 months" in dry.stdout and "not a snapshot name; never touched" in dry.stdout
    assert (hourly / "2020-01-01_000000").is_dir()
    plan = json.loads(daemon.bkctl("--json", "prune", "--dry-run").stdout)["plan"]["web1"]
    assert {d["snapshot"]: d["action"] for d in plan} == {
        "2020-01-01_000000": "delete", "2020-01-01_050000": "delete", newest: "keep", "my-notes": "keep"}

    done = daemon.bkctl("prune", "web1")
    assert done.returncode == 0 and "web1: keep 2, deleted 2" in done.stdout
    assert sorted(p.name for p in hourly.iterdir()) == sorted([newest, "my-notes"])
    wait_until(lambda: daemon.call("status")["deletion_queue"] == [], 20, what="the trash to empty")
    assert list((daemon.workdir / "backup/web1/.trash").iterdir()) == []
    assert [s["name"] for s in daemon.call("snapshots.list", host="web1")["snapshots"]] == [newest]


def test_a_snapshot_run_prunes_after_the_new_snapshot_exists(tmp_path, daemon_factory):
    source = make_tree(tmp_path / "src", 3)
    daemon = daemon_factory([{"name": "web1", "source": str(source)}],
                            retention={"hourly_hours": 1, "daily_days": 1, "monthly_months": 1}).start()
    hourly = daemon.workdir / "backup/web1/hourly"
    hourly.mkdir(parents=True)
    (hourly / "2021-05-05_000000").mkdir()
    job = daemon.run_snapshot()
    assert job["status"] == "ok"
    assert [p.name for p in hourly.iterdir()] == [job["hosts"][0]["snapshot"]]


@pytest.mark.skipif(os.geteuid() != 0, reason="chattr +i needs root (CI runs as root)")
def test_what_waits_in_the_trash_shows_in_status_and_a_failed_deletion_is_tried_again(tmp_path, daemon_factory):
    """SPEC §7: the deletion queue is visible in `status`. A file that cannot
    be deleted (immutable) keeps its pruned snapshot in the queue; the next
    prune tries again."""
    source = make_tree(tmp_path / "src", 3)
    (source / "only-in-the-first.txt").write_text("first\n")
    daemon = daemon_factory([{"name": "web1", "source": str(source)}],
                            retention={"hourly_hours": 0, "daily_days": 0, "monthly_months": 0}).start()
    first = daemon.run_snapshot()["hosts"][0]["snapshot"]
    (source / "only-in-the-first.txt").unlink()
    stuck = daemon.workdir / "backup/web1/hourly" / first / "only-in-the-first.txt"
    subprocess.run(["chattr", "+i", str(stuck)], check=True)
    try:
        assert daemon.run_snapshot()["status"] == "ok"  # its prune takes the first snapshot
        wait_until(lambda: '"trash.delete_failed"' in daemon.log(), 20, what="the deletion to fail")
        assert daemon.call("status")["deletion_queue"] == [f"web1/{first}"]
        shown = daemon.bkctl("status")
        assert f"deleting in the background: 1 (web1/{first})" in shown.stdout, shown.stdout
    finally:
        subprocess.run(["chattr", "-i", str(daemon.workdir / "backup/web1/.trash" / first / stuck.name)])
        subprocess.run(["chattr", "-i", str(stuck)], capture_output=True)
    # Past the second the first snapshot is named after: a run within it would take that freed name,
    # which sorts before the second snapshot's "-2", and its prune would keep both (nothing to wake).
    named = datetime.strptime(first[:17], "%Y-%m-%d_%H%M%S").replace(tzinfo=timezone.utc).timestamp()
    wait_until(lambda: time.time() >= named + 1, 5, what="the next second")
    assert daemon.run_snapshot()["status"] == "ok"  # its prune takes the second snapshot and wakes the collector
    wait_until(lambda: daemon.call("status")["deletion_queue"] == [], 20, what="the trash to empty")
    assert list((daemon.workdir / "backup/web1/.trash").iterdir()) == []
