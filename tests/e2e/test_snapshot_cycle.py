"""End to end: bkd as a subprocess, bkctl as a subprocess, over the real socket."""

import json
import os
import time

from conftest import make_tree, wait_until


def test_two_snapshots_share_unchanged_files_and_history_survives_restart(tmp_path, daemon_factory):
    source = make_tree(tmp_path / "source", files=40)
    daemon = daemon_factory([{"name": "web1", "source": str(source)}]).start()

    first = daemon.bkctl("run", "web1", "--wait")
    assert first.returncode == 0, first.stdout + first.stderr
    (source / "dir1" / "file1.txt").write_text("changed\n")
    second = daemon.bkctl("run", "web1", "--wait")
    assert second.returncode == 0, second.stdout + second.stderr

    hourly = daemon.workdir / "backup" / "web1" / "hourly"
    snapshots = sorted(p.name for p in hourly.iterdir())
    assert len(snapshots) == 2 and not any(name.startswith(".") for name in snapshots)
    old, new = (hourly / name for name in snapshots)
    assert (old / "dir0/file0.txt").stat().st_ino == (new / "dir0/file0.txt").stat().st_ino
    assert (old / "dir1/file1.txt").stat().st_ino != (new / "dir1/file1.txt").stat().st_ino
    assert (new / "dir1/file1.txt").read_text() == "changed\n"
    assert (old / "dir1/file1.txt").read_text() == "content of file 1\n" * 2
    assert os.readlink(daemon.workdir / "backup" / "web1" / "latest") == f"hourly/{new.name}"

    listed = daemon.bkctl_json("snapshots", "web1")["snapshots"]
    assert [s["name"] for s in listed] == snapshots
    assert listed[0]["files"] == 40 and listed[1]["files"] == 40
    assert listed[0]["changed_files"] == 40 and listed[1]["changed_files"] == 1
    assert listed[1]["deleted_files"] == 0
    assert listed[1]["bytes"] > 0
    assert [s["tier"] for s in listed] == ["hourly", "latest"]

    status = daemon.bkctl_json("status")
    assert status["hosts"]["web1"]["last_snapshot"] == new.name
    assert status["hosts"]["web1"]["last_result"] == "ok"

    assert daemon.stop() == 0
    daemon.start()
    jobs = daemon.bkctl_json("jobs")["jobs"]
    assert [j["status"] for j in jobs] == ["ok", "ok"]
    assert {h["snapshot"] for j in jobs for h in j["hosts"]} == set(snapshots)
    human = daemon.bkctl("jobs")
    assert human.returncode == 0 and human.stdout.count(" ok ") == 2


def test_human_output_of_status_snapshots_and_job(tmp_path, daemon_factory):
    source = make_tree(tmp_path / "source", files=5)
    daemon = daemon_factory([{"name": "web1", "source": str(source)}]).start()
    job = daemon.run_snapshot("web1")

    status = daemon.bkctl("status")
    assert status.returncode == 0
    header, row = status.stdout.splitlines()[:2]
    assert header.split()[:3] == ["HOST", "STATE", "STAGE"]
    assert row.split()[:2] == ["web1", "idle"] and " ok " in row

    snapshots = daemon.bkctl("snapshots", "web1")
    assert snapshots.returncode == 0
    assert job["hosts"][0]["snapshot"] in snapshots.stdout and " 5 " in snapshots.stdout

    detail = daemon.bkctl("job", str(job["job_id"]))
    assert detail.returncode == 0 and "web1: ok" in detail.stdout
    as_json = json.loads(daemon.bkctl("--json", "job", str(job["job_id"])).stdout)
    assert as_json["job"]["hosts"][0]["stats"]["files"] == 5


def test_a_failed_run_keeps_the_previous_snapshot_and_leaves_no_partial(tmp_path, daemon_factory):
    source = make_tree(tmp_path / "source", files=5)
    daemon = daemon_factory([{"name": "web1", "source": str(source)}]).start()
    good = daemon.run_snapshot()
    source.rename(tmp_path / "gone")

    result = daemon.bkctl("run", "--wait")
    assert result.returncode == 1
    assert "failed" in result.stdout and "rsync exited with code 23" in result.stdout

    host_dir = daemon.workdir / "backup" / "web1"
    assert [p.name for p in (host_dir / "hourly").iterdir()] == [good["hosts"][0]["snapshot"]]
    assert os.readlink(host_dir / "latest") == f"hourly/{good['hosts'][0]['snapshot']}"
    status = daemon.bkctl_json("status")["hosts"]["web1"]
    assert status["last_result"] == "failed"
    assert status["last_error"] == "snapshot: rsync exited with code 23 (partial transfer due to error)"


def test_files_vanishing_during_transfer_complete_the_snapshot_with_a_warning(tmp_path, daemon_factory):
    source = tmp_path / "source"
    source.mkdir()
    (source / "a-big.bin").write_bytes(os.urandom(3 * 1024 * 1024))  # sent first, slowly
    (source / "b-vanishes.txt").write_text("here when the file list is made\n")
    daemon = daemon_factory([{"name": "web1", "source": str(source)}], rsync={"bwlimit": "1000"}).start()
    job_id = daemon.call("job.start", hosts=["web1"])["job_id"]
    wait_until(lambda: (daemon.workdir / "backup/web1/hourly").exists()
               and any((daemon.workdir / "backup/web1/hourly").iterdir()), 20, what="the transfer to start")
    time.sleep(0.5)  # the file list has been sent; a-big.bin is still crawling
    (source / "b-vanishes.txt").unlink()

    job = daemon.wait_job(job_id)
    assert job["status"] == "warning", job
    host = job["hosts"][0]
    assert host["error"] == "rsync exited with code 24 (some files vanished before they could be transferred)"
    assert "b-vanishes.txt" in host["detail"]  # the file names: admins only
    latest = daemon.workdir / "backup/web1/latest"
    assert (latest / "a-big.bin").read_bytes() == (source / "a-big.bin").read_bytes()
    assert not (latest / "b-vanishes.txt").exists()
    assert daemon.bkctl("job", str(job_id)).returncode == 0


def test_status_shows_live_progress_while_rsync_runs(tmp_path, daemon_factory):
    source = tmp_path / "source"
    source.mkdir()
    (source / "big.bin").write_bytes(os.urandom(4 * 1024 * 1024))
    daemon = daemon_factory([{"name": "web1", "source": str(source)}], rsync={"bwlimit": "800"}).start()
    job_id = daemon.call("job.start")["job_id"]

    def progressing():
        host = daemon.call("status")["hosts"]["web1"]
        progress = host["progress"]
        return host if progress and 0 < progress["percent"] < 100 and progress["bytes"] > 0 else None

    host = wait_until(progressing, 20, what="progress in status")
    assert host["state"] == "running" and host["stage"] == "snapshot"
    assert host["progress"]["rate"] > 0 and host["progress"]["eta_s"] is not None
    human = daemon.bkctl("status")
    assert "%" in human.stdout.splitlines()[1]
    assert daemon.wait_job(job_id)["status"] == "ok"
    assert daemon.call("status")["hosts"]["web1"]["progress"] is None
