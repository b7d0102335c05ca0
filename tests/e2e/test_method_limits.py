"""Expensive methods have their own concurrency limits (issue 18, item 3):
beyond a method's limit a call is answered -32006 at once (busy: try
again). Before, 900 pipelined `hosts.test` took 1,023 of 1,024 descriptors
and 1,500 `notify.test` opened 1,500 SMTP connections. Silences are one per
host and kind (a new one replaces the old), so 2,000 of them leave
`alerts.list` small."""

import json
import os
import socket
import threading
import time
from pathlib import Path

from bkctl import protocol
from conftest import make_tree
from receivers import SmtpReceiver, self_signed_certificate
from test_connection_limits import nofile

BUSY = protocol.ErrorCode.METHOD_BUSY


def pipelined(path: Path, calls: list[tuple[str, dict]], connections: int) -> list[dict]:
    """calls spread over that many connections, each connection's sent at once; every answer."""
    answers: list[dict] = []
    lock = threading.Lock()

    def one(share: list[tuple[str, dict]]) -> None:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(120)
            sock.connect(str(path))
            sock.sendall(b"".join(protocol.encode(protocol.request(m, p, i)) for i, (m, p) in enumerate(share)))
            lines = sock.makefile("rb")
            got = [json.loads(lines.readline()) for _ in share]
        with lock:
            answers.extend(got)

    threads = [threading.Thread(target=one, args=(calls[i::connections],)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    return answers


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_pipelined_hosts_tests_are_refused_beyond_the_limit_and_leave_descriptors_and_backups_alone(
        tmp_path, daemon_factory):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ssh").write_text("#!/bin/sh\nsleep 3\necho 'ssh: connect to host far port 22: timed out' >&2\nexit 255\n")
    (fake / "ssh").chmod(0o755)
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "src", 30))},
                             {"name": "far", "source": "far:/srv"}])
    with nofile(1024):
        daemon.start(env={"PATH": f"{fake}:{os.environ['PATH']}"})
    idle = descriptors(daemon.proc.pid)
    most, stop = [idle], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            most.append(descriptors(daemon.proc.pid))
            stop.wait(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    job_id = daemon.call("job.start", hosts=["web1"])["job_id"]
    started = time.monotonic()
    answers = pipelined(daemon.socket, [("hosts.test", {"hosts": ["far"]})] * 200, connections=25)
    status_took = time.monotonic()
    assert daemon.call("status")["hosts"]["web1"]
    status_took = time.monotonic() - status_took
    stop.set()
    watcher.join()

    codes = [a["error"]["code"] if "error" in a else "ok" for a in answers]
    assert len(codes) == 200 and set(codes) <= {"ok", BUSY}, set(codes)
    assert codes.count(BUSY) >= 150 and 2 <= codes.count("ok") <= 50, codes.count("ok")
    busy = next(a["error"] for a in answers if "error" in a)
    assert busy["message"].startswith("busy: hosts.test is already being answered 2 time(s) at once, its limit")
    assert busy["data"] == {"limit": 2}
    assert max(most) - idle < 60, (idle, max(most))  # two calls' ssh and rsync, not two hundred
    assert status_took < 2.0
    assert daemon.wait_job(job_id)["status"] == "ok"  # the backup beside it
    assert time.monotonic() - started < 120
    assert "Too many open files" not in daemon.log()


def mailing_daemon(tmp_path, daemon_factory):
    """A daemon with one email sink: an SMTP server that takes a second per message."""
    cert, key = self_signed_certificate(tmp_path)
    smtp = SmtpReceiver(cert, key, "bkd", "pw", delay=1.0)
    (tmp_path / "password").write_text("pw\n")
    daemon = daemon_factory(
        [{"name": "web1", "source": str(make_tree(tmp_path / "src", 3))}],
        notify=[{"name": "mail", "type": "email", "smtp_host": "127.0.0.1", "smtp_port": smtp.port,
                 "security": "starttls", "username": "bkd", "password_file": str(tmp_path / "password"),
                 "from": "bkd@backup1.example.org", "to": ["ops@example.org"]}])
    return daemon.start(env={"SSL_CERT_FILE": str(cert)}), smtp


def test_notify_test_makes_at_most_its_limit_of_smtp_connections(tmp_path, daemon_factory):
    daemon, smtp = mailing_daemon(tmp_path, daemon_factory)
    try:
        answers = pipelined(daemon.socket, [("notify.test", {})] * 40, connections=20)
    finally:
        smtp.stop()
    codes = [a["error"]["code"] if "error" in a else "ok" for a in answers]
    assert codes.count(BUSY) >= 30 and codes.count("ok") >= 1, codes
    assert smtp.max_in_flight == 1 and len(smtp.messages) == codes.count("ok")
    # Refusals are audited like refusals by role: the first, then one entry a minute with a count.
    entries = [e for e in daemon.call("audit.list", limit=100)["entries"] if e["method"] == "notify.test"]
    assert len(entries) == codes.count("ok") + 1, entries
    assert sum(e["outcome"].startswith("error -32006: busy:") for e in entries) == 1


def test_two_thousand_silences_leave_one_per_host_and_kind(tmp_path, daemon_factory):
    daemon = daemon_factory([{"name": name, "source": str(make_tree(tmp_path / name, 3))}
                             for name in ("web1", "web2")]).start()
    kinds = [None, "run_failed", "stale", "disk"]
    calls = [("alerts.silence", {**({"host": host} if host else {}), **({"kind": kind} if kind else {}),
                                 "for": "3650d", "note": "x" * 1000})
             for index in range(2000)
             for host in [("web1", "web2", None)[index % 3]]
             for kind in [kinds[index % 4] or ("stale" if host is None else None)]]
    answers = pipelined(daemon.socket, calls, connections=4)
    assert all("result" in answer for answer in answers), [a for a in answers if "error" in a][:3]
    listed = daemon.call("alerts.list")
    pairs = {(s["host"], s["kind"]) for s in listed["silences"]}
    assert len(listed["silences"]) == len(pairs) <= 12, listed["silences"]
    assert len(json.dumps(listed)) < 20_000


def test_bkctl_tries_a_busy_method_again(tmp_path, daemon_factory):
    daemon, smtp = mailing_daemon(tmp_path, daemon_factory)
    try:
        results: list = []
        threads = [threading.Thread(target=lambda: results.append(daemon.bkctl("notify", "test")))
                   for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        smtp.stop()
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    assert smtp.max_in_flight == 1 and len(smtp.messages) == 2
