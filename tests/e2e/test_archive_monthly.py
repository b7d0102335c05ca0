"""Archives (each compressor) and monthly golden copies through the daemon."""

import filecmp
import os
import subprocess

import pytest

from conftest import make_tree


def same_tree(left, right) -> bool:
    comparison = filecmp.dircmp(left, right)
    if comparison.left_only or comparison.right_only or comparison.diff_files or comparison.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(left, right, comparison.common_files, shallow=False)
    return not mismatch and not errors and all(
        same_tree(os.path.join(left, d), os.path.join(right, d)) for d in comparison.common_dirs)


@pytest.mark.parametrize("compression,suffix", [("zstd", ".tar.zst"), ("gzip", ".tar.gz"), ("pigz", ".tar.gz")])
def test_archives_extract_with_plain_tar_and_equal_latest(tmp_path, daemon_factory, compression, suffix):
    source = make_tree(tmp_path / "src", 30)
    (source / "dir0" / "link").symlink_to("file0.txt")
    daemon = daemon_factory([{"name": "web1", "source": str(source)}],
                            archive={"compression": compression, "level": 5}, monthly={"enabled": False}).start()
    job = daemon.wait_job(daemon.call("job.start", hosts=["web1"], kind="all")["job_id"])  # snapshot, then archive
    assert job["status"] == "ok", job
    snapshot = job["hosts"][0]["snapshot"]
    archive = daemon.workdir / "backup/web1/archives" / f"web1_{snapshot}{suffix}"
    assert job["hosts"][0]["stats"]["archive"] == archive.name
    # No partial left; beside it its checksum, its index and its snapshot's manifest.
    assert sorted(p.name for p in archive.parent.iterdir()) == [
        archive.name + suffix for suffix in ("", ".index", ".manifest", ".sha256")]

    listing = subprocess.run(["tar", "-tf", str(archive)], capture_output=True, text=True, check=True).stdout
    assert "./dir3/file27.txt" in listing.splitlines()
    out = tmp_path / "extracted"
    out.mkdir()
    subprocess.run(["tar", "-xf", str(archive), "-C", str(out)], check=True)
    assert same_tree(out, daemon.workdir / "backup/web1/latest")
    assert os.readlink(out / "dir0" / "link") == "file0.txt"

    again = daemon.run_snapshot("web1")  # a snapshot run is only a snapshot: archives are their own work
    assert "archive" not in again["hosts"][0]["stats"]
    assert len(list(archive.parent.glob(f"*{suffix}"))) == 1
    forced = daemon.bkctl("run", "web1", "--kind", "archive", "--wait")
    assert forced.returncode == 0, forced.stdout
    assert len(list(archive.parent.glob(f"*{suffix}"))) == 2


def test_monthly_copy_is_made_at_once_hardlinked_and_only_once_a_month(tmp_path, daemon_factory):
    source = make_tree(tmp_path / "src", 5)
    daemon = daemon_factory([{"name": "web1", "source": str(source)}], archive={"enabled": False}).start()
    first = daemon.wait_job(daemon.call("job.start", hosts=["web1"], kind="all")["job_id"])
    monthly_name = first["hosts"][0]["stats"]["monthly"]
    monthly = daemon.workdir / "backup/web1/monthly" / monthly_name
    latest = daemon.workdir / "backup/web1/hourly" / first["hosts"][0]["snapshot"]
    assert (monthly / "dir0/file0.txt").stat().st_ino == (latest / "dir0/file0.txt").stat().st_ino

    second = daemon.run_snapshot("web1")
    assert "monthly" not in second["hosts"][0]["stats"]
    forced = daemon.call("job.start", kind="monthly")["job_id"]
    host = daemon.wait_job(forced)["hosts"][0]
    assert host["status"] == "ok" and host["stats"]["skipped"] == "this month's copy exists"
    assert [p.name for p in monthly.parent.iterdir()] == [monthly_name]


def test_archive_and_monthly_without_a_snapshot_fail_clearly(tmp_path, daemon_factory):
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "src", 2))}]).start()
    result = daemon.bkctl("run", "--kind", "archive", "--wait")
    assert result.returncode == 1 and "no complete snapshot yet" in result.stdout


def test_schedule_lists_each_hosts_work_and_its_next_run(tmp_path, daemon_factory):
    source = make_tree(tmp_path / "src", 2)
    daemon = daemon_factory([{"name": "web1", "source": str(source)},
                             {"name": "db1", "source": str(source), "schedule": {"snapshot_every": "6h"}}],
                            schedule={"enabled": True}).start()
    from conftest import wait_until
    wait_until(lambda: all(h["last_result"] == "ok" for h in daemon.call("status")["hosts"].values()),
               30, what="the first scheduled snapshots")
    # Archives and monthly copies are their own scheduled work, due at once after a first snapshot.
    backup = daemon.workdir / "backup"
    wait_until(lambda: all(list((backup / h / "archives").glob("*.tar.zst")) and list((backup / h).glob("monthly/20*"))
                           for h in ("web1", "db1")) and not any(
        h["heavy"] for h in daemon.call("status")["hosts"].values()), 30, what="the scheduled heavy work")
    entries = {(e["host"], e["kind"]): e for e in daemon.bkctl_json("schedule")["entries"]}
    assert set(entries) == {(h, k) for h in ("web1", "db1") for k in ("snapshot", "archive", "monthly")}
    assert entries[("web1", "snapshot")]["every"] == "1h" and entries[("db1", "snapshot")]["every"] == "6h"
    assert entries[("db1", "archive")]["next_run"] >= entries[("db1", "snapshot")]["next_run"]
    human = daemon.bkctl("schedule")
    assert human.returncode == 0 and "in 5h" in human.stdout and "monthly on day 1" in human.stdout
