"""A remote rsync frozen while its SSH connection stays up (SIGSTOP): rsync's
own --timeout never fires, since both ends keep trading keepalives. bkd's
stall watchdog, on the I/O counters of the run's processes, ends the run."""

import os
import signal
import subprocess
import time

import pytest

from conftest import slow_source, wait_until

STALL = 5  # rsync.timeout, seconds


def _descendants(pid: int) -> list[int]:
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [p for child in map(int, children) for p in (child, *_descendants(child))]


def _remote_rsyncs(fleet, alias: str) -> list[int]:
    found = []
    for pid in _descendants(fleet.procs[alias].pid):
        try:
            if open(f"/proc/{pid}/comm").read().strip() == "rsync":
                found.append(pid)
        except FileNotFoundError:
            pass
    return found


def _receiving(staging_root, name: str) -> bool:
    """rsync is writing its temporary copy of `name` in a staging directory."""
    for partial in staging_root.glob(".partial-*"):
        for entry in partial.glob(f".{name}.*"):
            try:
                if entry.stat().st_size > 256 * 1024:
                    return True
            except FileNotFoundError:
                pass
    return False


@pytest.fixture
def frozen(ssh_fleet):
    """SIGSTOP a host's remote rsync processes; they are killed at the end."""
    stopped = []

    def freeze(alias: str) -> list[int]:
        pids = wait_until(lambda: _remote_rsyncs(ssh_fleet, alias), 10, what="the remote rsync")
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        stopped.extend(pids)
        return pids

    yield freeze
    for pid in stopped:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("phase", ["first pull", "incremental copy"])
def test_a_run_whose_remote_rsync_is_frozen_fails_as_hung_and_leaves_no_process(
        phase, tmp_path, daemon_factory, ssh_fleet, frozen):
    source = slow_source(tmp_path / "remote", megabytes=8)
    ssh_fleet.add_host("web1")
    options = ["ConnectTimeout=3", "ServerAliveInterval=2", "ServerAliveCountMax=3"]
    daemon = daemon_factory([{"name": "web1", "source": f"web1:{source}/",
                              "rsync": {"timeout": f"{STALL}s", "bwlimit": "1000"}}],
                            ssh=ssh_fleet.ssh_settings(options=options)).start()
    hourly = daemon.workdir / "backup/web1/hourly"
    if phase == "incremental copy":
        # A transfer slower than the stall limit is not stalled: 8 MiB at 1000 KiB/s.
        started = time.monotonic()
        first = daemon.run_snapshot("web1")
        assert first["status"] == "ok", first
        assert time.monotonic() - started > STALL
        (source / "big.bin").write_bytes(os.urandom(8 * 1024 * 1024))

    job_id = daemon.call("job.start", hosts=["web1"])["job_id"]
    wait_until(lambda: _receiving(hourly, "big.bin"), 30, what="the transfer to be under way")
    frozen("web1")
    stopped_at = time.monotonic()
    job = daemon.wait_job(job_id, timeout=60)
    took = time.monotonic() - stopped_at

    run = job["hosts"][0]
    assert run["status"] == "failed", run
    assert run["error"] == f"snapshot: hung: no I/O for {STALL}s"  # for every role
    assert STALL <= took < STALL + 10, took
    (alert,) = [a for a in daemon.bkctl_json("alerts")["alerts"] if a["kind"] == "run_failed"]
    assert f"hung: no I/O for {STALL}s" in alert["message"]
    # The run's processes (rsync, ssh, an ssh master) are gone, and so is its partial snapshot.
    assert _descendants(daemon.proc.pid) == []
    assert not list(hourly.glob(".partial-*"))
