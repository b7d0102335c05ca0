"""Archives and monthly copies are heavy work of their own: scheduled beside
the snapshots, never delaying them, reading the snapshot they started on;
their crash leftovers are cleaned and old archives expire on schedule."""

import os
from datetime import datetime, timedelta, timezone

from conftest import make_tree, wait_until


def test_a_long_archive_never_delays_the_next_snapshot(tmp_path, daemon_factory):
    source = tmp_path / "src"
    source.mkdir()
    (source / "random.bin").write_bytes(os.urandom(48 * 1024 * 1024))  # zstd -19 takes a while on this
    daemon = daemon_factory([{"name": "web1", "source": str(source), "schedule": {"snapshot_every": "2s"}}],
                            schedule={"enabled": True}, archive={"compression": "zstd", "level": 19},
                            monthly={"enabled": False}, retention={"hourly_hours": 0, "daily_days": 0,
                                                                   "monthly_months": 0}).start()
    status = wait_until(lambda: (s := daemon.call("status")["hosts"]["web1"])["heavy"] and s, 60,
                        what="the scheduled archive to run")
    assert status["heavy"]["kind"] == "archive" and status["heavy"]["state"] == "running"
    archived = sorted((daemon.workdir / "backup/web1/hourly").iterdir())[0].name
    snapshots_then = len(daemon.call("snapshots.list", host="web1")["snapshots"])
    # While it compresses, snapshots go on every two seconds, and retention (which would
    # keep only the newest) leaves the snapshot the archive reads alone.
    wait_until(lambda: daemon.call("status")["hosts"]["web1"]["heavy"] is None
               or any(j["kind"] == "snapshot" and j["trigger"] == "schedule" and j["status"] == "ok"
                      and j["job_id"] > 2 for j in daemon.call("jobs.list")["jobs"]), 60,
               what="a snapshot during the archive")
    assert daemon.call("status")["hosts"]["web1"]["heavy"] is not None, "the archive ended first: make it longer"
    assert (daemon.workdir / "backup/web1/hourly" / archived).is_dir()
    assert snapshots_then >= 1
    wait_until(lambda: (daemon.workdir / "backup/web1/archives" / f"web1_{archived}.tar.zst").exists(), 120,
               what="the archive of the snapshot it started on")
    wait_until(lambda: not (daemon.workdir / "backup/web1/hourly" / archived).exists(), 30,
               what="retention to take the unpinned snapshot")


def test_crash_leftovers_of_heavy_work_are_cleaned_at_start(tmp_path, daemon_factory):
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "src", 3))}])
    host = daemon.workdir / "backup/web1"
    for directory in ("archives", "monthly/.partial-2026-01-abcd/dir"):
        (host / directory).mkdir(parents=True, mode=0o700)
    (daemon.workdir / "backup").chmod(0o700)
    host.chmod(0o700)
    (host / "archives/.partial-1234-web1_2026-01-01_000000.tar.zst").write_bytes(b"half")
    (host / "monthly/.partial-2026-01-abcd/dir/file").write_text("linked data\n")
    daemon.start()
    assert not list((host / "archives").iterdir())
    wait_until(lambda: not list((host / "monthly").iterdir()) and not daemon.call("status")["deletion_queue"], 15,
               what="the monthly leftover to go through the trash")


def test_old_archives_expire_on_schedule_even_when_archives_are_disabled(tmp_path, daemon_factory):
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "src", 3))}],
                            archive={"enabled": False, "keep_days": 5})
    archives = daemon.workdir / "backup/web1/archives"
    archives.mkdir(parents=True, mode=0o700)
    for directory in (daemon.workdir / "backup", daemon.workdir / "backup/web1"):
        directory.chmod(0o700)
    now = datetime.now(timezone.utc)
    names = [f"web1_{(now - timedelta(days=days)).strftime('%Y-%m-%d_%H%M%S')}.tar.zst" for days in (30, 10, 8)]
    for name in names:
        (archives / name).write_bytes(b"x")
        (archives / f"{name}.sha256").write_text("0 x\n")
    daemon.start()
    # All are older than keep_days; the newest is always kept.
    wait_until(lambda: sorted(p.name for p in archives.iterdir()) == sorted([names[2], f"{names[2]}.sha256"]), 15,
               what="old archives to expire")
