"""A second copy (SPEC §8, issue 22): two real daemons, a primary and a
replica, the replica reaching the primary's backup root through a loopback
sshd whose only key is forced to `rrsync -ro -absolute ROOT` (the README's
line), as an administrator sets it up."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import stat
import time
from pathlib import Path

import pytest

import exposition
from conftest import make_tree, wait_until
from test_metrics import on_a_replica, used_and_documented

pytestmark = pytest.mark.timeout(300)

EVERY = "2s"


def entries(root: Path) -> dict[str, tuple]:
    """Every entry below root: type, mode, size, mtime and content (or link target)."""
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            st = path.lstat()
            key = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                found[key] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                found[key] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                found[key] = ("file", stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns,
                              hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def forced_key(fleet, root: Path, name: str) -> Path:
    """An authorized_keys file whose one line lets the fleet's key read root, nothing else."""
    keys = fleet.root / f"{name}_authorized_keys"
    public = Path(f"{fleet.client_key}.pub").read_text().strip()
    keys.write_text(f'restrict,command="/usr/bin/rrsync -ro -absolute {root}" {public}\n')
    return keys


class Pair:
    def __init__(self, primary, replica, source: Path, fleet):
        self.primary, self.replica, self.source, self.fleet = primary, replica, source, fleet
        self.primary_root = Path(primary.config["backup_root"])
        self.replica_root = Path(replica.config["backup_root"])

    def snapshot(self) -> str:
        """A snapshot on the primary, in a second of its own."""
        time.sleep(1.05)
        job = self.primary.run_snapshot("web1")
        assert job["status"] == "ok", job
        return job["hosts"][0]["snapshot"]

    def pull(self, host: str = "p1.web1", status: str = "ok") -> dict:
        wait_until(lambda: host in self.replica.call("status")["hosts"], 60, what=f"the replica to know {host}")
        job = self.replica.run_snapshot(host)
        assert job["status"] == status, self.replica.call("job.get", job_id=job["job_id"])
        return job

    def names(self, daemon, host: str) -> list[str]:
        return [s["name"] for s in daemon.call("snapshots.list", host=host)["snapshots"]]


@pytest.fixture
def pair(daemon_factory, ssh_fleet, tmp_path):
    def make(replica_settings: dict | None = None, schedule: dict | None = None, **replica_overrides) -> Pair:
        source = make_tree(tmp_path / "source", files=30)
        (source / "linked").write_text("one inode, two names\n")
        os.link(source / "linked", source / "dir0" / "linked-too")
        os.symlink("dir1/file1.txt", source / "a-link")
        primary = daemon_factory([{"name": "web1", "source": str(source)}], name="primary",
                                 history={"copy_every": "1s"})
        primary.start()
        root = Path(primary.config["backup_root"])
        ssh_fleet.add_host("bkd-primary", authorized_keys=forced_key(ssh_fleet, root, "primary"))
        replica = daemon_factory([], name="replica", ssh=ssh_fleet.ssh_settings(),
                                 replica=[{"name": "p1", "source": f"bkd-primary:{root}/", "every": EVERY,
                                           "lag_after": "1h", **(replica_settings or {})}],
                                 **({"schedule": schedule} if schedule else {}), **replica_overrides)
        replica.start()
        return Pair(primary, replica, source, ssh_fleet)

    return make


def test_three_snapshots_are_replicated_with_their_names_trees_shared_inodes_and_hardlinks(pair):
    p = pair()
    first = p.snapshot()
    (p.source / "dir1" / "file5.txt").write_text("changed once\n")
    second = p.snapshot()
    (p.source / "dir2" / "new.txt").write_text("new in the third\n")
    third = p.snapshot()
    # What the primary holds beside its complete snapshots: none of it is ever copied.
    web1 = p.primary_root / "web1"
    (web1 / "hourly" / ".partial-2026-01-01_000000-abcdef" / "half").mkdir(parents=True)
    (web1 / ".trash" / "2020-01-01_000000").mkdir(parents=True)
    (web1 / ".trash" / "2020-01-01_000000" / "pruned").write_text("gone\n")
    (web1 / "meta" / "2030-01-01_000000.manifest").write_text("# of nothing complete\n")

    wait_until(lambda: "p1.web1" in p.replica.call("status")["hosts"], 60, what="the replica to know p1.web1")
    dry = p.replica.wait_job(p.replica.call("job.start", hosts=["p1.web1"], dry_run=True)["job_id"])
    assert dry["status"] == "ok" and dry["hosts"][0]["stats"]["wanted"] == 3
    assert dry["hosts"][0]["stats"]["wanted_names"] == [first, second, third]
    assert not (p.replica_root / "p1.web1" / "hourly").exists()  # a dry run writes nothing
    job = p.pull()
    assert job["hosts"][0]["snapshot"] == third and job["hosts"][0]["stats"]["pulled"] == 3
    assert p.names(p.replica, "p1.web1") == [first, second, third] == p.names(p.primary, "web1")
    copy = p.replica_root / "p1.web1"
    for name in (first, second, third):
        assert entries(copy / "hourly" / name) == entries(web1 / "hourly" / name), name
    # Consecutive copies share the inodes of unchanged files; the changed one is new.
    inode = lambda name, path: (copy / "hourly" / name / path).stat().st_ino  # noqa: E731
    assert inode(first, "dir3/file3.txt") == inode(second, "dir3/file3.txt") == inode(third, "dir3/file3.txt")
    assert inode(first, "dir1/file5.txt") != inode(second, "dir1/file5.txt") == inode(third, "dir1/file5.txt")
    for name in (first, second, third):  # a hard link inside a snapshot stays one
        assert inode(name, "linked") == inode(name, "dir0/linked-too")
        assert (copy / "hourly" / name / "linked").stat().st_nlink >= 2
    assert os.readlink(copy / "latest") == f"hourly/{third}"
    # Nothing partial, nothing from the trash, no manifest of an incomplete snapshot.
    assert sorted(p.name for p in (copy / "hourly").iterdir()) == [first, second, third]
    assert not (copy / ".trash").exists()
    assert not (copy / "meta" / "2030-01-01_000000.manifest").exists()
    assert (copy / "meta" / f"{third}.manifest").read_bytes() == (web1 / "meta" / f"{third}.manifest").read_bytes()

    # A replicated host is a host: verify, ls, restore, and nothing new to pull.
    assert p.replica.bkctl("verify", "p1.web1", "--all").returncode == 0
    listing = p.replica.bkctl_json("ls", "p1.web1", second, "/dir1")
    assert "file5.txt" in {e["name"] for e in listing["entries"]}
    target = p.replica_root.parent / "restored"
    result = p.replica.bkctl("restore", "p1.web1", first, "/dir1/file5.txt", "--to", str(target))
    assert result.returncode == 0, result.stderr
    assert (target / "dir1" / "file5.txt").read_bytes() == (web1 / "hourly" / first / "dir1/file5.txt").read_bytes()
    again = p.pull()
    assert again["hosts"][0]["stats"]["pulled"] == 0 and again["hosts"][0]["snapshot"] is None
    upstream = p.replica.bkctl_json("replicas")["upstreams"][0]
    assert upstream["name"] == "p1" and upstream["ok"] is True
    [host] = upstream["hosts"]
    assert (host["host"], host["newest"], host["primary_newest"], host["last_result"]) == \
        ("p1.web1", third, third, "ok")
    assert 0 <= host["lag_s"] < 60 and host["behind"] is False
    assert upstream["state"]["ok"] is True and upstream["state"]["audit_entries"] >= 1
    shown = p.replica.bkctl("replicas")
    assert shown.returncode == 0 and f"p1 <- bkd-primary:{p.primary_root}/" in shown.stdout
    assert f"p1.web1  {third}" in shown.stdout and "audit chain ok" in shown.stdout
    # The daily report names the upstreams; the metrics the rules and the dashboard use are there.
    digest = p.replica.bkctl_json("report")
    assert [(u["name"], [h["host"] for h in u["hosts"]]) for u in digest["upstreams"]] == [("p1", ["p1.web1"])]
    assert "detail" not in digest["upstreams"][0]  # viewers read the digest
    assert "upstream p1 (bkd-primary:" in p.replica.bkctl("report").stdout
    used_and_documented(exposition.parse(p.replica.call("metrics")["text"]), on_a_replica)
    # The primary, with no [[replica]], says so.
    assert p.primary.call("replicas.list") == {"upstreams": []}


def test_a_byte_flipped_on_the_primary_in_a_file_the_replica_lacks_is_an_integrity_alert_naming_the_snapshot(pair):
    p = pair()
    first = p.snapshot()
    (p.source / "dir3" / "fresh.bin").write_bytes(b"A" * 4096)
    second = p.snapshot()
    # Bit rot on the primary, after its manifest was written: same size, same mtime.
    damaged = p.primary_root / "web1" / "hourly" / second / "dir3" / "fresh.bin"
    st = damaged.stat()
    damaged.write_bytes(b"A" * 2048 + b"B" + b"A" * 2047)
    os.utime(damaged, ns=(st.st_atime_ns, st.st_mtime_ns))

    job = p.pull(status="warning")
    run = job["hosts"][0]
    assert run["stats"]["pulled"] == 2 and run["stats"]["mismatched_files"] == 1
    assert second in run["error"] and "fresh.bin" not in run["error"]  # a category for every role
    assert "dir3/fresh.bin (changed)" in run["detail"]  # the path: for admins
    alert = wait_until(lambda: next((a for a in p.replica.call("alerts.list")["alerts"]
                                     if a["kind"] == "integrity" and a["host"] == "p1.web1"), None),
                       30, what="the integrity alert")
    assert alert["subject"] == second and second in alert["message"] and "fresh.bin" not in alert["message"]
    # The copy is kept, with the primary's manifest: verify finds the same file.
    assert p.names(p.replica, "p1.web1") == [first, second]
    verify = p.replica.bkctl("--json", "verify", "p1.web1", second)
    assert verify.returncode == 1
    assert [(m["path"], m["problem"]) for m in json.loads(verify.stdout)["mismatches"]] == \
        [("dir3/fresh.bin", "changed")]
    assert p.replica.bkctl("verify", "p1.web1", first).returncode == 0
    # The primary's next snapshot links the same bad inode (the file did not change at the source), and the
    # primary's manifest still says it is fine: the replica does not link its own bad copy into the next copy
    # (whose manifest would then say it is fine too), it fetches that file again in full, and says so again.
    third = p.snapshot()
    job = p.pull(status="warning")
    assert job["hosts"][0]["stats"]["mismatched_files"] == 1 and third in job["hosts"][0]["error"]
    assert p.replica.bkctl("verify", "p1.web1", third).returncode == 1


def test_the_primary_pruning_never_deletes_the_replicas_copies(pair):
    p = pair()
    older = p.snapshot()
    p.pull()
    newer = p.snapshot()
    # The primary keeps only its newest now, and prunes.
    p.primary.config["retention"] = {"hourly_hours": 0, "daily_days": 0, "monthly_months": 0}
    p.primary.write_config()
    assert p.primary.call("config.reload")["ok"]
    plan = p.primary.call("prune", hosts=["web1"])["plan"]["web1"]
    assert {d["snapshot"]: d["action"] for d in plan} == {older: "delete", newer: "keep"}
    assert p.names(p.primary, "web1") == [newer]
    assert (p.primary_root / "web1" / ".trash").is_dir()
    p.pull()
    assert p.names(p.replica, "p1.web1") == [older, newer]
    assert not (p.replica_root / "p1.web1" / ".trash").exists()
    assert entries(p.replica_root / "p1.web1" / "hourly" / older)  # still whole


def test_the_primary_down_is_a_failed_run_then_replica_lag_which_resolves_when_it_returns(pair):
    p = pair({"every": "2s", "lag_after": ""}, schedule={"enabled": True, "snapshot_every": "1h"})
    first = p.snapshot()
    wait_until(lambda: p.names(p.replica, "p1.web1") == [first] if "p1.web1" in p.replica.call("status")["hosts"]
               else False, 60, what="the scheduled pull")
    wait_until(lambda: p.replica.call("status")["hosts"]["p1.web1"]["last_result"] == "ok", 30,
               what="a good pull")
    p.fleet.kill("bkd-primary")
    alerts = lambda: {(a["kind"], a["host"], a["subject"]) for a in p.replica.call("alerts.list")["alerts"]}  # noqa
    wait_until(lambda: ("run_failed", "p1.web1", None) in alerts(), 60, what="run_failed")
    assert p.replica.call("status")["hosts"]["p1.web1"]["last_result"] == "failed"
    lag = wait_until(lambda: next((a for a in p.replica.call("alerts.list")["alerts"]
                                   if a["kind"] == "replica_lag"), None), 60, what="replica_lag")
    assert lag["host"] == "p1.web1" and "behind primary p1 (more than 4s)" in lag["message"]  # 2 x every
    assert ("run_failed", None, "replica p1") in alerts()  # the visits of the primary fail too
    assert p.names(p.replica, "p1.web1") == [first]  # kept, and restored while the primary is gone
    target = p.replica_root.parent / "restored"
    restored = p.replica.bkctl("restore", "p1.web1", "latest", "/dir2", "--to", str(target))
    assert restored.returncode == 0, restored.stderr
    assert entries(target / "dir2") == entries(p.primary_root / "web1" / "hourly" / first / "dir2")
    check = p.replica.bkctl("check")
    assert check.returncode == 2 and "replica_lag" in check.stdout
    metrics = p.replica.call("metrics")["text"]
    assert 'bkd_replica_upstream_up{replica="p1"} 0' in metrics
    assert 'bkd_replica_lag_seconds{replica="p1",host="p1.web1"}' in metrics

    p.fleet.restart("bkd-primary")
    second = p.snapshot()
    wait_until(lambda: p.names(p.replica, "p1.web1") == [first, second], 60, what="the next scheduled pull")
    wait_until(lambda: not {"replica_lag", "run_failed"} & {kind for kind, _, _ in alerts()}, 60,
               what="the alerts to resolve")


def test_kill_9_of_the_replica_mid_pull_resumes_and_nothing_partial_is_ever_listed(pair):
    p = pair(rsync={"bwlimit": "400k"})
    (p.source / "big.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    name = p.snapshot()
    wait_until(lambda: "p1.web1" in p.replica.call("status")["hosts"], 60, what="the replica to know p1.web1")
    job_id = p.replica.call("job.start", hosts=["p1.web1"])["job_id"]
    hourly = p.replica_root / "p1.web1" / "hourly"

    def partial_with_data():
        partials = [d for d in hourly.glob(".partial-*")] if hourly.is_dir() else []
        big = [d / "big.bin" for d in partials] + [f for d in partials for f in d.glob(".big.bin.*")]
        return partials if any(f.exists() and f.stat().st_size > 256 * 1024 for f in big) else None

    wait_until(partial_with_data, 60, what="the pull to be half way")
    assert p.names(p.replica, "p1.web1") == []
    p.replica.proc.kill()
    p.replica.proc.wait()
    p.replica.start()
    assert p.replica.call("job.get", job_id=job_id)["job"]["status"] == "interrupted"
    assert p.names(p.replica, "p1.web1") == []  # the partial is no snapshot
    assert list(hourly.glob(".partial-*"))
    p.replica.config["rsync"] = {}
    p.replica.write_config()
    assert p.replica.call("config.reload")["ok"]
    p.pull()
    assert p.names(p.replica, "p1.web1") == [name]
    assert entries(hourly / name) == entries(p.primary_root / "web1" / "hourly" / name)
    assert not list(hourly.glob(".partial-*"))
    resumed = [json.loads(line) for line in p.replica.log().splitlines()
               if '"snapshot.start"' in line and '"resume_from"' in line]
    assert resumed[-1]["resume_from"], resumed


def test_a_replica_of_a_replica(pair, daemon_factory, ssh_fleet):
    p = pair()
    first = p.snapshot()
    (p.source / "dir0" / "more.txt").write_text("more\n")
    second = p.snapshot()
    p.pull()
    ssh_fleet.add_host("bkd-replica", authorized_keys=forced_key(ssh_fleet, p.replica_root, "replica"))
    third = daemon_factory([], name="third", ssh=ssh_fleet.ssh_settings(),
                           replica=[{"name": "r1", "source": f"bkd-replica:{p.replica_root}/", "every": EVERY,
                                     "lag_after": "1h"}])
    third.start()
    wait_until(lambda: "r1.p1.web1" in third.call("status")["hosts"], 60, what="the second replica to know it")
    job = third.run_snapshot("r1.p1.web1")
    assert job["status"] == "ok", third.call("job.get", job_id=job["job_id"])
    assert [s["name"] for s in third.call("snapshots.list", host="r1.p1.web1")["snapshots"]] == [first, second]
    root = Path(third.config["backup_root"])
    for name in (first, second):
        assert entries(root / "r1.p1.web1" / "hourly" / name) == entries(p.primary_root / "web1" / "hourly" / name)
    assert third.bkctl("verify", "r1.p1.web1", "--all").returncode == 0


def test_the_primarys_state_database_is_kept_in_generations_and_a_rewritten_history_is_an_alert(pair):
    p = pair()
    p.snapshot()  # audited calls on the primary: its chain grows
    state = p.replica_root / ".bkd-upstreams" / "p1" / "state"

    def generations():
        return sorted(d.name for d in state.iterdir() if not d.name.startswith(".")) if state.is_dir() else []

    def newest_entries():
        kept = generations()
        return kept and json.loads((state / kept[-1] / "chain.json").read_text())["entries"]

    wait_until(lambda: (newest_entries() or 0) >= 1, 60, what="a generation holding the primary's audit entries")
    good = generations()[-1]
    with sqlite3.connect(state / good / "bkd.sqlite") as db:  # a plain SQLite file, readable without bkd
        assert db.execute("SELECT count(*) FROM jobs").fetchone()[0] >= 1
    upstream = p.replica.call("replicas.list")["upstreams"][0]
    assert upstream["state"]["ok"] is True

    # The primary's database is wiped: it starts again with an empty history.
    p.primary.stop()
    for path in Path(p.primary.config["state_dir"]).glob("bkd.sqlite*"):
        path.unlink()
    p.primary.start()
    p.primary.run_snapshot("web1")
    alert = wait_until(lambda: next((a for a in p.replica.call("alerts.list")["alerts"]
                                     if a["kind"] == "integrity" and a["subject"] == "replica p1 state"), None),
                       60, what="the integrity alert about the primary's history")
    assert alert["host"] is None and "does not extend generation" in alert["message"]
    assert good in generations()  # the good generation is never overwritten
    assert (state / good / "bkd.sqlite").exists()


def test_a_manifest_bkd_did_not_write_marks_the_copy_and_is_never_trusted(pair):
    p = pair()
    name = p.snapshot()
    planted = p.primary_root / "web1" / "meta" / f"{name}.manifest"
    planted.write_bytes(manifest_header() + b"0" * 64 + b" 1 ../../etc/shadow\n")
    job = p.pull(status="warning")
    assert "do not match the primary's manifest" in job["hosts"][0]["error"]
    assert f"the primary's {name}.manifest line 2: refusing the path" in job["hosts"][0]["detail"]
    assert p.names(p.replica, "p1.web1") == [name]  # copied all the same, and marked
    copy = p.replica_root / "p1.web1"
    assert b"shadow" not in (copy / "meta" / f"{name}.manifest").read_bytes()  # its own, exact manifest
    wait_until(lambda: any(a["kind"] == "integrity" and a["subject"] == name
                           for a in p.replica.call("alerts.list")["alerts"]), 30, what="the integrity alert")


def manifest_header() -> bytes:
    from bkd.pipeline.manifest import HEADER
    return HEADER
