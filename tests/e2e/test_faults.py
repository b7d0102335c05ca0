"""When the state store or a directory fails: runs still end and say so, the
schedule goes on, and start-up problems end the process with one line."""

import os
import subprocess
import time

import pytest

from conftest import BIN, make_tree, wait_until

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI runs as root)")


@pytest.fixture
def small_disk(small_tmpfs):
    return small_tmpfs("16m")


def fill(disk):
    """Take every free byte of disk; returns the filler to delete."""
    filler = disk / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
    return filler


@ROOT_ONLY
def test_a_full_state_dir_never_strands_a_run_and_the_schedule_goes_on(tmp_path, small_disk, daemon_factory):
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "src", 20)),
                              "schedule": {"snapshot_every": "2s"}}],
                            state_dir=str(small_disk / "state"), schedule={"enabled": True},
                            archive={"enabled": False}, monthly={"enabled": False}).start()
    wait_until(lambda: daemon.call("status")["hosts"]["web1"]["last_result"] == "ok", 30, what="a first snapshot")
    filler = fill(small_disk)
    hourly = daemon.workdir / "backup/web1/hourly"
    before = len(list(hourly.iterdir()))

    result = daemon.bkctl("--json", "run", "web1", "--wait")  # job.start answers with its id, the run ends
    assert result.returncode == 0, result.stdout + result.stderr
    final = [line for line in result.stdout.splitlines() if '"job"' in line][-1]
    import json
    job = json.loads(final)["job"]
    assert job["status"] == "ok" and job["hosts"][0]["snapshot"]
    assert daemon.call("job.get", job_id=job["job_id"])["job"]["status"] == "ok"  # from memory
    # The scheduler keeps going while the store refuses writes.
    wait_until(lambda: len(list(hourly.iterdir())) >= before + 3, 30, what="scheduled snapshots on a full state_dir")
    assert "store.write_failed" in daemon.log()

    filler.unlink()
    wait_until(lambda: "store.recovered" in daemon.log(), 30, what="the records to catch up")
    daemon.stop()
    daemon.start()
    assert daemon.call("job.get", job_id=job["job_id"])["job"]["status"] == "ok"  # written, not "interrupted"


def test_a_host_whose_directory_is_broken_fails_alone(tmp_path, daemon_factory):
    daemon = daemon_factory([{"name": "good", "source": str(make_tree(tmp_path / "good", 3)),
                              "schedule": {"snapshot_every": "2s"}},
                             {"name": "bad", "source": str(make_tree(tmp_path / "bad", 3))}],
                            schedule={"enabled": True}, archive={"enabled": False}, monthly={"enabled": False})
    (daemon.workdir / "backup/bad").mkdir(parents=True, mode=0o700)
    (daemon.workdir / "backup").chmod(0o700)
    (daemon.workdir / "backup/bad/hourly").write_text("not a directory\n")
    daemon.start()
    good = daemon.workdir / "backup/good/hourly"
    wait_until(lambda: good.exists() and len(list(good.iterdir())) >= 2, 30, what="good's scheduled snapshots")
    status = daemon.call("status")
    assert status["hosts"]["good"]["error"] is None
    assert "bad/hourly" in status["hosts"]["bad"]["error"] and "Not a directory" in status["hosts"]["bad"]["error"]
    wait_until(lambda: daemon.call("status")["hosts"]["bad"]["last_result"] == "failed", 30, what="bad to fail")
    assert "bkd_host_error{host=\"bad\"} 1" in daemon.call("metrics")["text"]
    assert {e["host"] for e in daemon.call("schedule.list")["entries"]} == {"good", "bad"}


def _serve(config_path, timeout=20, env=None):
    return subprocess.run([str(BIN / "bkd"), "--config", str(config_path), "serve"], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def _one_line(result) -> str:
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("bkd: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_corrupt_database_ends_start_up_with_one_line_and_releases_the_lock(tmp_path, daemon_factory):
    daemon = daemon_factory([])
    state = daemon.workdir / "state"
    state.mkdir(mode=0o700)
    (state / "bkd.sqlite").write_bytes(b"this is not a database" * 100)
    line = _one_line(_serve(daemon.config_path))
    assert f"{state / 'bkd.sqlite'}" in line and "move it aside" in line
    (state / "bkd.sqlite").unlink()
    daemon.start()  # nothing held the lock
    assert "hosts" in daemon.call("status")


def test_an_rsync_with_receiver_path_escape_bugs_ends_start_up_with_one_line(tmp_path, daemon_factory):
    """SPEC §7: the daemon refuses to start with an rsync older than 3.4.0."""
    old = tmp_path / "old-rsync"
    old.mkdir()
    (old / "rsync").write_text("#!/bin/sh\necho 'rsync  version 3.2.7  protocol version 31'\n")
    (old / "rsync").chmod(0o755)
    daemon = daemon_factory([])
    line = _one_line(_serve(daemon.config_path, env={"PATH": f"{old}:{os.environ['PATH']}"}))
    assert line == "bkd: rsync 3.2.7 has known receiver path-escape bugs; bkd needs rsync 3.4.0 or newer"
    assert not (daemon.workdir / "state").exists()  # refused before it made or locked anything


def test_a_state_dir_that_is_a_file_ends_start_up_with_one_line(tmp_path, daemon_factory):
    daemon = daemon_factory([])
    (daemon.workdir / "state").write_text("oops\n")
    line = _one_line(_serve(daemon.config_path))
    assert "state_dir" in line and "not a directory" in line


def test_an_impossible_backup_root_ends_start_up_with_one_line(tmp_path, daemon_factory):
    (tmp_path / "file").write_text("a file\n")
    daemon = daemon_factory([], backup_root=str(tmp_path / "file" / "backup"))
    line = _one_line(_serve(daemon.config_path))
    assert "backup root" in line and "is not a directory" in line


def test_a_backup_root_on_a_pseudo_filesystem_ends_start_up_with_one_line(tmp_path, daemon_factory):
    """Issue 23: the same check as check-config's, at start."""
    root = f"/proc/bkd-test-{os.getpid()}"
    daemon = daemon_factory([], backup_root=root)
    assert _one_line(_serve(daemon.config_path)) == (
        f"bkd: cannot use backup root {root}: it is on proc, a pseudo filesystem that holds no files: "
        "choose a directory on a disk")


@ROOT_ONLY
def test_a_backup_root_in_memory_is_logged_at_start(small_tmpfs, daemon_factory):
    memory = small_tmpfs("8m")
    daemon = daemon_factory([], backup_root=str(memory / "backup")).start()
    (line,) = [line for line in daemon.log().splitlines() if "dir.in_memory" in line]
    assert f"backup root {memory}/backup is on tmpfs, in memory: what bkd keeps there is lost at the next " \
           "reboot" in line and '"level": "warning"' in line
    assert daemon.stop() == 0


@ROOT_ONLY
def test_a_read_only_backup_root_says_which_and_why(tmp_path, daemon_factory):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,mode=0700", "bkd-test-ro", str(read_only)], check=True)
    try:
        daemon = daemon_factory([], backup_root=str(read_only / "backup"))
        line = _one_line(_serve(daemon.config_path))
        assert line == (f"bkd: cannot use backup root {read_only / 'backup'}: does not exist and cannot be "
                        "created: read-only file system (is it in ReadWritePaths=?)")
        check = subprocess.run([str(BIN / "bkd"), "--config", str(daemon.config_path), "check-config"],
                               capture_output=True, text=True)
        assert check.returncode == 1 and "read-only file system" in check.stderr
    finally:
        subprocess.run(["umount", "-l", str(read_only)], check=False)


def test_two_daemons_never_share_a_state_dir(tmp_path, daemon_factory):
    first = daemon_factory([], name="one").start()
    second = daemon_factory([], name="two", state_dir=first.config["state_dir"])
    line = _one_line(_serve(second.config_path))
    assert f"already running on state_dir {first.config['state_dir']}" in line
    time.sleep(0.2)
    assert "hosts" in first.call("status")


def test_a_symlink_planted_in_a_host_directory_is_never_followed(tmp_path, daemon_factory):
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "src", 3))}]).start()
    assert daemon.run_snapshot()["status"] == "ok"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    meta = daemon.workdir / "backup/web1/meta"
    subprocess.run(["rm", "-rf", str(meta)], check=True)
    meta.symlink_to(elsewhere)  # someone with write access to the host directory plants it
    job = daemon.run_snapshot()
    assert job["status"] == "failed" and "symbolic links" in job["hosts"][0]["error"], job
    assert "web1/meta" in job["hosts"][0]["detail"]  # admins see which
    assert list(elsewhere.iterdir()) == []  # nothing was written through it


def test_a_compare_that_fails_stops_the_hardlink_copy_beside_it(tmp_path, daemon_factory):
    """The incremental path links the previous snapshot (cp -al) while rsync
    compares. When the compare fails at once (here: the source is gone), the
    copy must be stopped with the run: left running, it outlived the failed
    run, and its fallback rebuilt a .partial directory after the run had
    cleaned up, so the next run took the slow resume path."""
    source = tmp_path / "src"
    for d in range(100):
        (source / f"d{d}").mkdir(parents=True)
        for f in range(300):
            (source / f"d{d}" / f"f{f}").write_bytes(b"")
    daemon = daemon_factory([{"name": "web1", "source": str(source)}],
                            archive={"enabled": False}, monthly={"enabled": False}).start()
    assert daemon.run_snapshot("web1")["status"] == "ok"
    source.rename(tmp_path / "gone")

    job = daemon.run_snapshot("web1")
    assert job["status"] == "failed"
    hourly = daemon.workdir / "backup/web1/hourly"

    def copying() -> bool:
        """A cp -al of this daemon's (it runs in hourly/): other tests on the machine may run their own."""
        found = subprocess.run(["pgrep", "-f", r"^cp -al -- .* \.partial-"], capture_output=True, text=True)
        for pid in found.stdout.split():
            try:
                if os.readlink(f"/proc/{pid}/cwd").startswith(str(daemon.workdir)):
                    return True
            except OSError:
                continue  # ended meanwhile
        return False

    for _ in range(30):  # 3 s: what a copy left running would do meanwhile
        assert not copying(), "cp -al outlived the failed run"
        time.sleep(0.1)
    assert [p.name for p in hourly.iterdir() if p.name.startswith(".partial")] == []
