"""Expiry of archives and monthly copies (pure file-name logic on a real directory)."""

from datetime import datetime, timezone

from bkd.tree.layout import HostDir
from bkd.pipeline.archive import expire_archives, expire_monthly

NOW = datetime(2026, 7, 15, 12, tzinfo=timezone.utc)


def test_archives_older_than_keep_days_go_and_the_newest_stays(tmp_path):
    host = HostDir(tmp_path / "web1")
    host.archives.mkdir(parents=True)
    for name in ["web1_2026-07-01_000000.tar.zst", "web1_2026-07-12_000000.tar.zst",
                 "web1_2026-07-14_000000.tar.gz", "other_2026-01-01_000000.tar.zst", "notes.txt"]:
        (host.archives / name).write_text("x")
    assert expire_archives(host, 5, NOW) == ["web1_2026-07-01_000000.tar.zst"]
    assert sorted(p.name for p in host.archives.iterdir()) == [
        "notes.txt", "other_2026-01-01_000000.tar.zst", "web1_2026-07-12_000000.tar.zst",
        "web1_2026-07-14_000000.tar.gz"]
    assert expire_archives(host, 0, datetime(2030, 1, 1, tzinfo=timezone.utc)) == ["web1_2026-07-12_000000.tar.zst"]
    assert [a.path.name for a in host.archive_files()] == ["web1_2026-07-14_000000.tar.gz"]


def test_monthly_copies_expire_into_the_trash(tmp_path):
    host = HostDir(tmp_path / "web1")
    for name in ["2024-01", "2025-08", "2026-06", "keep-me"]:
        (host.monthly / name).mkdir(parents=True)
    assert host.monthly_copies() == ["2024-01", "2025-08", "2026-06"]
    assert expire_monthly(host, 12, NOW) == ["2024-01"]
    assert sorted(p.name for p in host.monthly.iterdir()) == ["2025-08", "2026-06", "keep-me"]
    assert [p.name for p in host.trash.iterdir()] == ["monthly-2024-01"]


def test_nothing_expires_while_the_host_is_held(tmp_path):
    from bkd.tree import holds
    host = HostDir(tmp_path / "web1")
    host.archives.mkdir(parents=True)
    host.meta.mkdir(parents=True)
    for name in ["web1_2026-07-01_000000.tar.zst", "web1_2026-07-14_000000.tar.zst"]:
        (host.archives / name).write_text("x")
    for name in ["2024-01", "2026-06"]:
        (host.monthly / name).mkdir(parents=True)
    holds.add(host, {"snapshot": "2026-07-14_000000", "signals": [], "examples": {}}, True, "2026-07-14T00:00:00Z")
    assert expire_archives(host, 5, NOW) == [] and expire_monthly(host, 12, NOW) == []
    assert len(host.archive_files()) == 2 and host.monthly_copies() == ["2024-01", "2026-06"]
    holds.release(host)
    assert expire_archives(host, 5, NOW) == ["web1_2026-07-01_000000.tar.zst"]
    assert expire_monthly(host, 12, NOW) == ["2024-01"]
