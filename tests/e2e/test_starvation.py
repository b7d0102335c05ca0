"""No client can starve the daemon (issue 18, item 2). A viewer pipelines
requests and never reads the answers — four connections of `daemon.info`
without end, and one of 200 `jobs.list` with a limit of 10,000 over a long
history — while snapshots are scheduled every 2 seconds. Each connection is
answered at most `[rpc] max_in_flight` requests at a time and then not read
until answers are taken; a connection whose answers stay unread for
`[rpc] unread_grace` is closed. Meanwhile scheduled snapshots start within
5 s of their slot, root's `status` answers within 2 s, and the daemon's
memory grows by less than the bound docs/design.md gives. (Before: the
daemon passed 1.5 GB, `status` took 5-7 s and slots were missed.)"""

import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import make_tree, wait_until
from unix_users import unix_users

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="acting as other users needs root (CI runs as root)")

PIPELINER = Path(__file__).with_name("pipeliner.py")
EVERY = 2.0  # seconds between scheduled snapshots
GRACE = 5.0  # unread_grace
ATTACK = 24.0  # seconds
HISTORY = 20_000  # finished jobs in the database before the attack
RSS_GROWTH_MB = 64  # docs/design.md: per connection about 2 MiB of requests read ahead + max_in_flight answers
STATS = json.dumps({"files": 123456, "bytes": 9876543210, "changed_files": 321, "deleted_files": 12,
                    "transferred_bytes": 123456789, "duration_s": 12.345, "hashed_files": 321, "manifest_s": 0.5})


def iso(time: datetime) -> str:
    return time.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def add_history(database: Path, jobs: int) -> None:
    """A long job history of web1, finished in the last days (kept by [history] keep)."""
    start = datetime.now(timezone.utc) - timedelta(days=30)
    rows = [(i, iso(start + timedelta(minutes=i)), iso(start + timedelta(minutes=i, seconds=5)))
            for i in range(1, jobs + 1)]
    with sqlite3.connect(database) as db:
        db.executemany("INSERT INTO jobs (job_id, kind, status, trigger, dry_run, started, finished) "
                       "VALUES (?, 'snapshot', 'ok', 'schedule', 0, ?, ?)", rows)
        db.executemany("INSERT INTO job_hosts (job_id, host, status, started, finished, snapshot, stats, detail) "
                       "VALUES (?, 'web1', 'ok', ?, ?, '2026-01-01_000000', ?, 'rsync said: all fine')",
                       [(*row, STATS) for row in rows])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def status_latency(path: Path) -> float:
    started = time.monotonic()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        sock.sendall(b'{"jsonrpc":"2.0","id":1,"method":"status"}\n')
        assert "result" in json.loads(sock.makefile("rb").readline())
    return time.monotonic() - started


class Sampler(threading.Thread):
    """Every 0.2 s until stopped: root's status latency and the daemon's RSS."""

    def __init__(self, daemon):
        super().__init__(daemon=True)
        self.daemon_under_test = daemon
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.rss: list[float] = []

    def run(self) -> None:
        while not self.stop.is_set():
            self.rss.append(rss_mb(self.daemon_under_test.proc.pid))
            self.latencies.append(status_latency(self.daemon_under_test.socket))
            self.stop.wait(0.2)


def scheduled_starts(daemon) -> list[float]:
    jobs = daemon.call("jobs.list", host="web1", limit=200)["jobs"]
    return sorted(datetime.fromisoformat(job["started"]).timestamp() for job in jobs
                  if job["trigger"] == "schedule" and job["job_id"] > HISTORY)


def test_pipelining_clients_that_never_read_cannot_starve_the_daemon(tmp_path, daemon_factory, short_tmp):
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "src", 20))}],
                            rpc={"unread_grace": f"{GRACE:g}s"})
    with unix_users() as users:
        group = users.group("v")
        attacker = users.user("P", [group])
        daemon.config["access"] = {"viewers": [group]}
        daemon.write_config()
        daemon.start()
        daemon.stop()
        add_history(daemon.workdir / "state" / "bkd.sqlite", HISTORY)
        daemon.config["schedule"] = {"enabled": True, "snapshot_every": f"{EVERY:g}s"}
        daemon.write_config()
        daemon.start()
        short_tmp.chmod(0o711)
        os.chown(daemon.socket, -1, int(subprocess.check_output(["getent", "group", group]).split(b":")[2]))
        wait_until(lambda: len(scheduled_starts(daemon)) >= 2, 30, 0.2, what="the first scheduled snapshots")
        baseline = max(rss_mb(daemon.proc.pid) for _ in range(5) if not time.sleep(0.1))

        sampler = Sampler(daemon)
        sampler.start()
        attack_began = time.time()
        as_attacker = ["setpriv", f"--reuid={attacker}", f"--regid={attacker}", "--init-groups", "--",
                       sys.executable, str(PIPELINER), str(daemon.socket), str(ATTACK)]
        infos = subprocess.Popen(as_attacker + ["daemon.info", "{}", "0", "4"], stdout=subprocess.PIPE, text=True)
        lists = subprocess.Popen(as_attacker + ["jobs.list", '{"limit": 10000}', "200", "1"],
                                 stdout=subprocess.PIPE, text=True)
        info_connections = json.loads(infos.communicate(timeout=ATTACK + 60)[0])
        list_connections = json.loads(lists.communicate(timeout=ATTACK + 60)[0])
        attack_ended = time.time()
        sampler.stop.set()
        sampler.join(30)
        starts = [t for t in scheduled_starts(daemon) if t >= attack_began - EVERY]
        log = daemon.log()
        daemon.stop()

    # The backups kept their schedule: each start within 5 s of its slot (the previous start + EVERY),
    # until the attack ended.
    delays = [b - (a + EVERY) for a, b in zip(starts, starts[1:] + [attack_ended])]
    assert len(starts) >= ATTACK / (EVERY + 5) and max(delays) < 5.0, delays
    # Root's status kept answering at once, and the daemon's memory stayed small.
    assert len(sampler.latencies) >= ATTACK / 2 and max(sampler.latencies) < 2.0, max(sampler.latencies)
    assert max(sampler.rss) - baseline < RSS_GROWTH_MB, (baseline, max(sampler.rss))
    # Each connection was closed once its answers had stayed unread for the grace, not before.
    closed = [c for c in info_connections + list_connections if c["closed"] is not None]
    assert len(closed) >= 4 and list_connections[0]["closed"] is not None, (info_connections, list_connections)
    for connection in closed:
        assert GRACE - 2 <= connection["closed"] - connection["last_write"] <= GRACE + 5, connection
    assert list_connections[0]["sent"] == 200
    assert "rpc.client_cut_off" in log and "unread_grace" in log
    print(f"\nstarts delayed at most {max(delays):.2f} s; status max {max(sampler.latencies) * 1000:.0f} ms; "
          f"RSS {baseline:.0f} MB, at most {max(sampler.rss):.0f} MB; {len(closed)} connections cut off")


def test_a_pipelining_client_that_reads_gets_every_answer(tmp_path, daemon_factory):
    """The bound is backpressure, not errors: 2,000 requests sent at once are all answered."""
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "src", 3))}],
                            rpc={"max_in_flight": 2}).start()
    count = 2000
    payload = b"".join(json.dumps({"jsonrpc": "2.0", "id": i, "method": "daemon.info"}).encode() + b"\n"
                       for i in range(count))
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(60)
        sock.connect(str(daemon.socket))
        writer = threading.Thread(target=sock.sendall, args=(payload,))
        writer.start()  # the daemon stops reading while answers wait: write and read at once
        lines = sock.makefile("rb")
        answers = [json.loads(lines.readline()) for _ in range(count)]
        writer.join(60)
    assert sorted(answer["id"] for answer in answers) == list(range(count))
    assert all("result" in answer for answer in answers)
