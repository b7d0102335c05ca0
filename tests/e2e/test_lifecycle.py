"""Daemon lifecycle: sd_notify, SIGTERM during a run, one daemon per backup root, exit codes."""

import os
import signal
import socket
import subprocess
import time
from datetime import datetime, timedelta

import pytest

from bkctl.client import Client
from conftest import slow_source, BIN, make_tree, wait_until


def rsync_pids(marker: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"rsync.*{marker}"], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


@pytest.fixture
def notify_socket(short_tmp):
    path = short_tmp / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    yield sock, path
    sock.close()


def receive_until(sock, wanted: str) -> list[str]:
    seen = []
    while True:
        message = sock.recv(4096).decode()
        seen.append(message)
        if wanted in message.split("\n"):
            return seen


def test_ready_after_listening_and_stopping_on_sigterm_which_ends_rsync(tmp_path, daemon_factory, notify_socket):
    sock, path = notify_socket
    source = slow_source(tmp_path / "src")
    daemon = daemon_factory([{"name": "web1", "source": str(source)}], rsync={"bwlimit": "200"})
    daemon.start(env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"}, wait=False)

    messages = receive_until(sock, "READY=1")
    Client(str(daemon.socket), timeout=1).close()  # READY=1 came only once the socket listened
    assert any(m == "STATUS=1 hosts, 0 running" for ready in messages for m in ready.split("\n"))
    receive_until(sock, "WATCHDOG=1")  # pinged from the event loop, every 0.2 s here

    job_id = daemon.call("job.start", hosts=["web1"])["job_id"]
    backup_root = str(daemon.workdir / "backup")
    wait_until(lambda: rsync_pids(backup_root), 20, what="rsync to run")
    wait_until(lambda: daemon.call("status")["hosts"]["web1"]["progress"], 20, what="data to flow")
    daemon.proc.send_signal(signal.SIGTERM)
    receive_until(sock, "STOPPING=1")
    assert daemon.proc.wait(20) == 0
    assert rsync_pids(backup_root) == []

    # The partial is kept for the next run to resume from, and is not a snapshot.
    hourly = daemon.workdir / "backup" / "web1" / "hourly"
    assert [p.name.startswith(".partial-") for p in hourly.iterdir()] == [True]
    assert not (daemon.workdir / "backup" / "web1" / "latest").exists()

    del daemon.config["rsync"]
    daemon.write_config()
    daemon.start()
    job = daemon.call("job.get", job_id=job_id)["job"]
    assert job["status"] == "interrupted" and job["hosts"][0]["status"] == "interrupted"
    assert daemon.run_snapshot("web1")["status"] == "ok"
    assert [p.name.startswith(".partial-") for p in hourly.iterdir()] == [False]
    assert (daemon.workdir / "backup/web1/latest/big.bin").read_bytes() == (source / "big.bin").read_bytes()


def test_a_second_daemon_on_the_same_backup_root_is_refused(tmp_path, daemon_factory):
    first = daemon_factory([], name="one").start()
    second = daemon_factory([], name="two", backup_root=first.config["backup_root"])
    result = subprocess.run([str(BIN / "bkd"), "--config", str(second.config_path), "serve"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert f"already running on backup root {first.config['backup_root']}" in result.stderr
    assert f"pid {first.proc.pid}" in result.stderr
    assert "hosts" in first.call("status")


def test_a_manual_run_on_a_busy_host_is_refused(tmp_path, daemon_factory):
    daemon = daemon_factory([{"name": "web1", "source": str(slow_source(tmp_path / "src", 4))}],
                            rsync={"bwlimit": "500"}).start()
    daemon.call("job.start", hosts=["web1"])
    result = daemon.bkctl("run", "web1")
    assert result.returncode == 1
    assert "already running: web1" in result.stderr
    daemon.stop()


def test_client_exit_codes(tmp_path, daemon_factory, short_tmp):
    missing = subprocess.run([str(BIN / "bkctl"), "--socket", str(short_tmp / "none.sock"), "status"],
                             capture_output=True, text=True)
    assert missing.returncode == 3
    assert f"socket {short_tmp / 'none.sock'} does not exist" in missing.stderr

    stale = short_tmp / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()
    refused = subprocess.run([str(BIN / "bkctl"), "--socket", str(stale), "status"], capture_output=True, text=True)
    assert refused.returncode == 3 and "refused" in refused.stderr

    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "s", 2))}]).start()
    unknown = daemon.bkctl("snapshots", "nope")
    assert unknown.returncode == 1 and "unknown host: nope" in unknown.stderr
    usage = daemon.bkctl("run", "--kind", "bogus")
    assert usage.returncode == 2
    env_socket = subprocess.run([str(BIN / "bkctl"), "status"], capture_output=True, text=True,
                                env={**os.environ, "BKD_SOCKET": str(daemon.socket)})
    assert env_socket.returncode == 0 and "web1" in env_socket.stdout


def test_scheduled_first_snapshot_is_taken_at_start(tmp_path, daemon_factory):
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "s", 3))}],
                            schedule={"enabled": True})
    daemon.start()
    wait_until(lambda: (daemon.workdir / "backup/web1/latest").exists(), 30, what="the first snapshot")
    jobs = daemon.call("jobs.list")["jobs"]
    assert jobs[0]["trigger"] == "schedule"
    host = daemon.call("status")["hosts"]["web1"]
    due_in = datetime.fromisoformat(host["next_run"]) - datetime.fromisoformat(host["last_snapshot_time"])
    assert timedelta(minutes=59) <= due_in <= timedelta(minutes=61)
    started = time.monotonic()
    assert daemon.stop() == 0 and time.monotonic() - started < 10


def test_a_scheduled_run_that_finds_the_host_busy_is_coalesced_and_logged(tmp_path, daemon_factory):
    daemon = daemon_factory([{"name": "web1", "source": str(slow_source(tmp_path / "src", 2))}],
                            schedule={"enabled": True, "snapshot_every": "1s"}, rsync={"bwlimit": "500"},
                            archive={"enabled": False}, monthly={"enabled": False}).start()
    wait_until(lambda: "schedule.coalesced" in daemon.log(), 20, what="a coalesced slot in the log")
    jobs = daemon.call("jobs.list")["jobs"]
    assert len(jobs) == 1 and jobs[0]["trigger"] == "schedule"  # the slot folded into the running job
    daemon.stop()


def test_the_status_line_counts_running_runs_not_queued_ones(tmp_path, daemon_factory, notify_socket):
    sock, path = notify_socket
    daemon = daemon_factory([{"name": f"h{i}", "source": str(slow_source(tmp_path / f"s{i}", 2))} for i in (1, 2)],
                            rsync={"bwlimit": "500"}, max_parallel_hosts=1)
    daemon.start(env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"}, wait=False)
    receive_until(sock, "READY=1")
    daemon.call("job.start")
    wait_until(lambda: daemon.call("status")["queued"] == 1, 10, what="one run to queue")
    seen = receive_until(sock, "STATUS=2 hosts, 1 running")  # not "2 running": one of them waits
    assert not any("2 running" in m for m in seen)
    daemon.call("job.cancel", hosts=["h1", "h2"])


def test_shutdown_waits_for_requests_in_flight_before_closing_the_store(tmp_path, daemon_factory):
    source = make_tree(tmp_path / "src", 300)
    daemon = daemon_factory([{"name": "web1", "source": str(source)}]).start()
    for _ in range(3):
        daemon.run_snapshot()
    calls = []

    def busy_client():  # keeps requests that touch the store in flight
        try:
            with Client(str(daemon.socket), timeout=10) as client:
                while True:
                    calls.append(client.call("jobs.list", {"limit": 100}))
                    client.call("snapshots.list", {"host": "web1"})
        except Exception as e:  # the daemon goes away: that is the point
            calls.append(e)

    import threading
    threads = [threading.Thread(target=busy_client) for _ in range(8)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(calls) > 20, 10, what="requests in flight")
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(20) == 0
    for thread in threads:
        thread.join(10)
    log = daemon.log()
    for trouble in ("Task exception was never retrieved", "closed database", "Traceback", "internal error"):
        assert trouble not in log


def test_sigterm_during_a_long_verify_stops_the_daemon_at_once(tmp_path, daemon_factory):
    """`bkctl verify` re-hashes whole snapshots; a stop meanwhile must not
    wait for that to finish (systemd would kill bkd and mark the unit failed)."""
    from bkd.pipeline import manifest

    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "src", 3))}]).start()
    snapshot = daemon.run_snapshot("web1")["hosts"][0]["snapshot"]
    host = daemon.workdir / "backup" / "web1"
    with open(host / "hourly" / snapshot / "zzz-big", "wb") as f:
        f.truncate(64 << 30)  # 64 GiB of holes: a minute or more to re-hash
    recorded = manifest.read(host / "meta" / f"{snapshot}.manifest")
    recorded[b"zzz-big"] = ("0" * 64, 64 << 30)
    manifest.write(host / "meta" / f"{snapshot}.manifest", recorded)
    verify = subprocess.Popen([str(BIN / "bkctl"), "--socket", str(daemon.socket), "verify", "web1", snapshot],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(2)
    assert verify.poll() is None  # still hashing
    started = time.monotonic()
    assert daemon.stop(timeout=30) == 0
    assert time.monotonic() - started < 10
    verify.wait(10)
