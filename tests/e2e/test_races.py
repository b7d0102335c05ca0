"""Requests that arrive in the same instant: one run per host and lane, a cancel
that finds what was just started, prunes that never trip over each other —
and a few hundred random interleavings that keep every promise."""

import json
import random
import threading
import time
from datetime import datetime, timedelta, timezone

import tomli_w

from bkctl import protocol
from bkctl.client import Client, RemoteError
from conftest import exchange, make_tree, requests_line, slow_source, wait_until


def _ms(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def test_two_job_starts_for_one_host_in_one_write_run_once(tmp_path, daemon_factory):
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "src", 50))}]).start()
    for attempt in range(5):
        answers = exchange(daemon.socket, requests_line((1, "job.start", {"hosts": ["web1"]}),
                                                        (2, "job.start", {"hosts": ["web1"]})))
        started = [a for a in answers if "result" in a]
        refused = [a for a in answers if "error" in a]
        assert len(started) == 1 and len(refused) == 1, answers
        assert refused[0]["error"]["code"] == protocol.ErrorCode.BUSY
        assert refused[0]["error"]["data"]["job_ids"] == [started[0]["result"]["job_id"]]
        assert daemon.wait_job(started[0]["result"]["job_id"])["status"] == "ok"
    assert daemon.bkctl("verify", "web1", "--all").returncode == 0  # every snapshot kept its manifest


def test_a_cancel_in_the_same_write_as_the_start_finds_the_run(tmp_path, daemon_factory):
    daemon = daemon_factory([{"name": "web1", "source": str(slow_source(tmp_path / "src", 4)),
                              "rsync": {"bwlimit": "500"}}]).start()
    answers = {a["id"]: a for a in exchange(daemon.socket, requests_line(
        (1, "job.start", {"hosts": ["web1"]}), (2, "job.cancel", {"hosts": ["web1"]})))}
    assert answers[2]["result"]["cancelled"] == ["web1"], answers
    job = daemon.wait_job(answers[1]["result"]["job_id"])
    assert job["status"] == "cancelled"
    assert not list((daemon.workdir / "backup/web1/hourly").glob(".partial-*"))


def _expired_snapshots(hourly, count):
    start = datetime(2019, 1, 1)
    for index in range(count):
        (hourly / (start + timedelta(hours=index)).strftime("%Y-%m-%d_%H%M%S")).mkdir(parents=True)


def test_concurrent_prunes_and_a_run_share_the_expired_snapshots_without_an_error(tmp_path, daemon_factory):
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "src", 5))}]).start()
    assert daemon.run_snapshot()["status"] == "ok"
    hourly = daemon.workdir / "backup/web1/hourly"
    _expired_snapshots(hourly, 300)
    answers = exchange(daemon.socket, requests_line((1, "prune", {}), (2, "prune", {})))
    assert all("result" in a for a in answers), answers
    deleted = sum(d["action"] == "delete" for a in answers for d in a["result"]["plan"]["web1"])
    assert deleted == 300  # the first took them all; the second, waiting its turn, found none
    assert len(list(hourly.iterdir())) == 1

    _expired_snapshots(hourly, 300)  # a manual prune racing a run's own prune stage
    answers = {a["id"]: a for a in exchange(daemon.socket, requests_line(
        (1, "job.start", {"hosts": ["web1"]}), (2, "prune", {})))}
    assert "result" in answers[2], answers
    assert daemon.wait_job(answers[1]["result"]["job_id"])["status"] == "ok"
    assert len(list(hourly.iterdir())) == 2
    wait_until(lambda: not daemon.call("status")["deletion_queue"], 30, what="the trash to empty")


class Fleet:
    """The concurrency test's model of the config: which hosts exist, the limit."""

    def __init__(self, daemon, sources):
        self.daemon, self.sources = daemon, sources
        self.lock = threading.Lock()
        self.hosts = set(sources)

    def reload(self, rng: random.Random) -> dict:
        with self.lock:
            hosts = set(self.hosts)
            name = rng.choice(sorted(self.sources))
            if name in hosts and len(hosts) > 1:
                hosts.discard(name)
            else:
                hosts.add(name)
            self.hosts = hosts
            config = dict(self.daemon.config)
            config["host"] = [{"name": h, "source": str(self.sources[h])} for h in sorted(hosts)]
            config["max_parallel_hosts"] = rng.randint(1, 3)
            self.daemon.config_path.write_text(tomli_w.dumps(config))
            with Client(str(self.daemon.socket)) as client:
                return client.call("config.reload")


def test_random_interleavings_keep_every_promise(tmp_path, daemon_factory):
    sources = {f"h{i}": make_tree(tmp_path / f"src{i}", 30) for i in (1, 2, 3)}
    daemon = daemon_factory([{"name": h, "source": str(s)} for h, s in sources.items()],
                            max_parallel_hosts=2, archive={"enabled": False}, monthly={"enabled": False}).start()
    fleet = Fleet(daemon, sources)
    errors, internal, job_ids = [], [], []

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with Client(str(daemon.socket)) as conn:
            for _ in range(80):
                op = rng.choice(["start", "start", "start", "cancel", "cancel_job", "prune", "reload"])
                try:
                    if op == "start":
                        hosts = rng.sample(sorted(sources), rng.randint(1, 3))
                        job_ids.append(conn.call("job.start", {"hosts": hosts})["job_id"])
                    elif op == "cancel":
                        conn.call("job.cancel", {"hosts": [rng.choice(sorted(sources))]})
                    elif op == "cancel_job" and job_ids:
                        conn.call("job.cancel", {"job_id": rng.choice(job_ids)})
                    elif op == "prune":
                        conn.call("prune", {"hosts": [rng.choice(sorted(sources))]})
                    elif op == "reload":
                        assert fleet.reload(rng)["ok"]
                except RemoteError as e:
                    (internal if e.code == protocol.ErrorCode.INTERNAL_ERROR else errors).append((op, e.code))
                time.sleep(rng.random() * 0.03)

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert internal == []
    # Refusals are the expected ones only: busy, unknown (removed) host, nothing to cancel.
    assert {code for _, code in errors} <= {protocol.ErrorCode.BUSY, protocol.ErrorCode.NOT_FOUND}

    wait_until(lambda: not daemon.call("status")["job_running"] and daemon.call("status")["queued"] == 0,
               120, what="every run to end")
    jobs = [daemon.call("job.get", job_id=job["job_id"])["job"]  # each run's times: job.get
            for job in daemon.call("jobs.list", limit=1000)["jobs"]]
    assert len(jobs) >= len(job_ids) > 10
    assert all(job["status"] in protocol.FINAL_STATUSES for job in jobs)
    runs = [(r["host"], _ms(r["started"]), _ms(r["finished"])) for j in jobs for r in j["hosts"] if r["started"]]

    # A host never had two snapshot runs at once.
    for host in sources:
        mine = sorted((s, f) for h, s, f in runs if h == host)
        for (_, end), (start, _) in zip(mine, mine[1:]):
            assert start >= end, f"{host}: a run started at {start} before the previous ended at {end}"

    # No run started while the limit in force was reached (the limits as the daemon logged them).
    limits = [(datetime.min.replace(tzinfo=timezone.utc), 2)]
    for line in daemon.log().splitlines():
        event = json.loads(line) if line.startswith("{") else {}
        if event.get("event") == "limits.set":
            limits.append((datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")), event["snapshot"]))
    for host, start, _ in runs:
        # Records carry milliseconds: a change within the run's millisecond may have come first or not.
        in_force = max([value for when, value in limits if when < start][-1:] +
                       [value for when, value in limits if start <= when < start + timedelta(milliseconds=1)])
        others = sum(1 for h, s, f in runs if (h, s) != (host, start) and s < start < f)
        assert others < in_force, (f"{host} started at {start} with {others} running under a limit of {in_force}: "
                                   f"{sorted((s, f, h) for h, s, f in runs if s < start < f)} {limits}")

    # Every complete snapshot has its manifest and verifies.
    for host in sources:
        if (daemon.workdir / "backup" / host / "hourly").exists():
            result = daemon.bkctl("verify", host, "--all")
            assert result.returncode == 0, result.stdout
