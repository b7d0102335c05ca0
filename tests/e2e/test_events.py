"""Live events: many subscribers, one stuck; ordering; the stuck one is dropped."""

import json
import socket
import subprocess
import threading
import time

from bkctl import protocol
from conftest import BIN, make_tree, wait_until


class Subscriber:
    def __init__(self, path, topics=None, max_queue=None, read=True):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(path))
        params = {}
        if topics:
            params["topics"] = topics
        if max_queue:
            params["max_queue"] = max_queue
        self.sock.sendall(protocol.encode(protocol.request("events.subscribe", params, 1)))
        self.file = self.sock.makefile("rb")
        self.answer = json.loads(self.file.readline())
        self.events = []
        self.closed = threading.Event()
        if read:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.file:
            self.events.append(json.loads(line)["params"])
        self.closed.set()

    def job_events(self):
        return [(e["job_id"], e["status"]) for e in self.events if e["topic"] == "job"]

    def close(self):
        self.sock.close()


def test_fifty_subscribers_one_stuck_all_others_get_every_job_event_in_order(tmp_path, daemon_factory):
    sources = [make_tree(tmp_path / f"src{i}", 20) for i in range(3)]
    daemon = daemon_factory([{"name": f"h{i}", "source": str(src)} for i, src in enumerate(sources)]).start()
    stuck = Subscriber(daemon.socket, max_queue=5, read=False)
    readers = [Subscriber(daemon.socket) for _ in range(49)]
    assert stuck.answer["result"]["max_queue"] == 5
    assert readers[0].answer["result"]["subscribed"] == ["alert", "host", "job", "log", "progress"]

    jobs = []
    for _ in range(10):  # as many jobs as it takes the stuck one to fall behind
        job = daemon.run_snapshot()
        assert job["status"] == "ok"
        jobs.append(job["job_id"])
        if "dropped" in daemon.log():
            break
    assert "events.subscriber_dropped" in daemon.log()

    expected = [(job_id, status) for job_id in jobs for status in ("queued", "ok")]
    for reader in readers:
        wait_until(lambda r=reader: len(r.job_events()) >= len(expected), 10, what="every job event")
        assert reader.job_events() == expected
        seqs = [e["seq"] for e in reader.events]
        assert seqs == sorted(seqs)
    # The stuck one gets its final notice even if it reads late, then the connection closes.
    time.sleep(3)
    stuck.sock.settimeout(10)
    tail = b""
    while chunk := stuck.sock.recv(65536):
        tail += chunk
    assert b'"topic":"dropped"' in tail.splitlines()[-1]
    assert daemon.call("status")["job_running"] is False
    for reader in readers:
        reader.close()


def test_watch_streams_event_lines_and_json(tmp_path, daemon_factory):
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "s", 3))}]).start()
    watchers = [subprocess.Popen([str(BIN / "bkctl"), "--socket", str(daemon.socket), *extra, "watch"],
                                 stdout=subprocess.PIPE, text=True) for extra in ([], ["--json"])]
    wait_until(lambda: daemon.call("status")["subscribers"] == 2, 10, what="both watchers to subscribe")
    job = daemon.run_snapshot()
    wait_until(lambda: daemon.call("status")["subscribers"] == 2, 1)
    daemon.stop()  # the daemon closes the stream: watch ends and says so
    human, as_json = (w.communicate(timeout=10)[0] for w in watchers)
    assert [w.returncode for w in watchers] == [3, 3]
    assert f"job_id={job['job_id']} job {job['job_id']} ok" in human
    assert "host=web1" in human and "snapshot.complete" in human
    events = [json.loads(line) for line in as_json.splitlines()]
    assert {"job", "host", "log"} <= {e["topic"] for e in events}
    assert ("ok", job["job_id"]) in [(e.get("status"), e.get("job_id")) for e in events if e["topic"] == "job"]


def test_progress_events_come_at_most_twice_a_second_per_run_to_the_very_end(tmp_path, daemon_factory):
    source = tmp_path / "src"
    source.mkdir()
    for index in range(400):  # many files, so rsync prints progress many times a second
        (source / f"f{index}").write_bytes(bytes(index % 256 for _ in range(4096)) * 4)
    daemon = daemon_factory([{"name": "web1", "source": str(source), "rsync": {"bwlimit": "2000"}}]).start()
    subscriber = Subscriber(daemon.socket, topics=["progress", "job"])
    job_id = daemon.call("job.start")["job_id"]
    daemon.wait_job(job_id)
    wait_until(lambda: (job_id, "ok") in subscriber.job_events(), 10, what="the job's final event")
    progress = [e for e in subscriber.events if e["topic"] == "progress"]
    assert len(progress) >= 2
    # Event times have seconds only: count per second of the daemon's clock.
    per_second = {}
    for event in progress:
        per_second[event["time"]] = per_second.get(event["time"], 0) + 1
    assert max(per_second.values()) <= 2, per_second
    # And nothing arrives for the run after its final host event.
    order = [e["topic"] for e in subscriber.events]
    assert "progress" not in order[order.index("job", 1):]
    subscriber.close()
