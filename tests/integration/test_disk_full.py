"""A full backup disk: a clear error, the previous snapshot intact, no partial left."""

import os

import pytest

from conftest import make_tree

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI runs as root)")


@pytest.fixture
def small_disk(small_tmpfs):
    return small_tmpfs("8m")


def test_a_full_backup_disk_fails_the_run_clearly_and_keeps_the_previous_snapshot(tmp_path, small_disk,
                                                                                  daemon_factory):
    source = make_tree(tmp_path / "src", 10)
    daemon = daemon_factory([{"name": "web1", "source": str(source)}], backup_root=str(small_disk / "backup"),
                            archive={"enabled": False}, monthly={"enabled": False}).start()
    good = daemon.run_snapshot()["hosts"][0]["snapshot"]
    before = sorted(p.name for p in (small_disk / "backup/web1/latest").rglob("*"))

    (source / "huge.bin").write_bytes(os.urandom(12 * 1024 * 1024))  # more than the disk holds
    result = daemon.bkctl("run", "--wait")
    assert result.returncode == 1
    assert "(the backup disk is full)" in result.stdout
    assert "No space left on device" in result.stdout

    host_dir = small_disk / "backup" / "web1"
    assert [p.name for p in (host_dir / "hourly").iterdir()] == [good]
    assert os.readlink(host_dir / "latest") == f"hourly/{good}"
    assert sorted(p.name for p in (host_dir / "latest").rglob("*")) == before
    assert daemon.call("status")["hosts"]["web1"]["last_result"] == "failed"
    assert "hosts" in daemon.call("status")  # and the daemon carries on
