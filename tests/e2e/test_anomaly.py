"""Ransomware-aware snapshots through the real daemon (SPEC §8 "Anomalies",
§7; issue 20): three hosts get fifteen ordinary runs — log appends, new
compressed files, a source tree updated, a package upgrade rewriting 250
small files — then one attack each: 60 % of the files overwritten with
random bytes, every file renamed to NAME.locked with a ransom note in every
directory, 70 % deleted. Each attack raises one `anomaly` alert on that very
snapshot, marks it suspect and holds the host's pruning (its own run's prune
deletes nothing; nor do `bkctl prune`, archive and monthly expiry), through
a reload, a restart and a kill -9, until `bkctl hosts release` lifts it,
audited. The ordinary runs raise none; a fourth host is unaffected."""

import json
import os
import random
import signal
from pathlib import Path

from bkd.rpc.methods import Api, method_table

from attacks import attack
from conftest import wait_until

WORDS = ("backup snapshot retention host daemon rsync archive monthly manifest verify restore schedule "
         "alert report metric prune inode entropy baseline signal").split()
VICTIMS = {"enc": "encrypt", "ren": "rename", "del": "delete"}
OLD = ("2020-01-01_000000", "2020-01-02_000000")  # what retention deletes: older than 24 months


class Source:
    """A small server's tree that changes the ordinary ways, round after round."""

    def __init__(self, root: Path, seed: int):
        self.root, self.rng, self.clock = root, random.Random(seed), 1_800_000_000
        for d in range(20):
            for f in range(15):
                self.write(f"home/docs/d{d:02d}/note{f:02d}.txt", self.text(1200))
        for p in range(30):
            self.write(f"home/photos/p{p:02d}.jpg", self.rng.randbytes(4000))  # random already
        for m in range(60):
            self.write(f"src/proj/pkg{m // 10}/mod{m:02d}.py", self.text(900))
        for m in range(250):
            self.write(f"usr/lib/pkg/sub{m // 25}/m{m:03d}.py", self.text(400))
        self.write("var/log/syslog", self.text(3000))
        self.write("var/log/app.log", self.text(2000))

    def text(self, size: int) -> bytes:
        words = []
        while sum(map(len, words)) < size:
            words.append(self.rng.choice(WORDS))
        return (" ".join(words) + "\n").encode()

    def write(self, relative: str, data: bytes, append: bool = False) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab" if append else "wb") as f:
            f.write(data)
        os.utime(path, (self.clock, self.clock))  # every change shows to rsync's quick check

    def files(self) -> list[Path]:
        return sorted(p for p in self.root.rglob("*") if p.is_file())

    def ordinary_round(self, number: int) -> None:
        self.clock += 3600
        self.write("var/log/syslog", self.text(300), append=True)
        self.write("var/log/app.log", self.text(200), append=True)
        self.write(f"var/log/old/app.{number}.gz", self.rng.randbytes(3000))  # compressed: random, and new
        sources = sorted((self.root / "src/proj").rglob("*.py"))
        for path in self.rng.sample(sources, 8):
            self.write(str(path.relative_to(self.root)), self.text(100), append=True)
        self.write(f"src/proj/pkg{number % 6}/new{number}.py", self.text(500))
        self.rng.choice(sources).unlink()
        for path in self.rng.sample(sorted((self.root / "home/docs").rglob("*.txt")), 5):
            self.write(str(path.relative_to(self.root)), self.text(150), append=True)
        if number == 8:  # a package upgrade: 250 small files rewritten, some added and removed
            for path in sorted((self.root / "usr/lib/pkg").rglob("*.py")):
                self.write(str(path.relative_to(self.root)), self.text(420))
            for index in range(15):
                self.write(f"usr/lib/pkg/sub{index % 10}/added{index}.py", self.text(300))

    def attack(self, how: str) -> None:
        self.clock += 3600
        attack(self, how)


def anomaly_alerts(daemon, every: bool = False) -> list[dict]:
    return [a for a in daemon.call("alerts.list", all=every)["alerts"] if a["kind"] == "anomaly"]


def held(daemon) -> dict[str, dict]:
    return {h["host"]: h for h in daemon.call("holds.list")["holds"]}


def snapshots(daemon, host: str) -> list[str]:
    return [s["name"] for s in daemon.call("snapshots.list", host=host)["snapshots"]]


def assert_held(daemon, suspect: dict[str, str], alerts: dict[str, int]) -> None:
    """Every victim held on its suspect snapshot, its one alert open; the calm host untouched."""
    holds = held(daemon)
    assert sorted(holds) == sorted(VICTIMS)
    for host in VICTIMS:
        assert holds[host]["held"] and holds[host]["snapshots"] == [suspect[host]]
        assert {a["host"]: a["id"] for a in anomaly_alerts(daemon)} == alerts
    status = daemon.call("status")["hosts"]
    assert {name: host["held"] for name, host in status.items()} == {**dict.fromkeys(VICTIMS, True), "calm": False}
    check = daemon.bkctl("check")
    assert check.returncode == 2 and all(f"{host} held after an anomaly" in check.stdout for host in VICTIMS)
    plan = daemon.bkctl_json("prune", "--dry-run")["plan"]
    for host in VICTIMS:
        assert {d["snapshot"]: (d["action"], d.get("held")) for d in plan[host] if d["snapshot"] in OLD} == \
            dict.fromkeys(OLD, ("keep", True))


def test_three_attacks_are_caught_on_their_snapshot_and_hold_pruning_until_a_release(tmp_path, daemon_factory):
    sources = {name: Source(tmp_path / "src" / name, seed) for seed, name in enumerate([*VICTIMS, "calm"])}
    daemon = daemon_factory([{"name": name, "source": str(source.root)} for name, source in sources.items()]).start()

    # Fifteen ordinary runs (and the first pull): no anomaly, no suspect.
    for number in range(16):
        if number:
            for source in sources.values():
                source.ordinary_round(number)
        job = daemon.run_snapshot()
        assert job["status"] == "ok", job
    assert anomaly_alerts(daemon, every=True) == []
    for name in sources:
        listed = daemon.call("snapshots.list", host=name)["snapshots"]
        assert len(listed) == 16 and not any(s["suspect"] for s in listed)
        assert listed[-1]["anomaly"]["baseline"] == 14  # the first pull is never part of a baseline
        upgrade = listed[8]["profile"]
        assert upgrade["changed"] >= 250 and upgrade["became_random"] == 0  # the package upgrade
    stats = daemon.call("job.get", job_id=job["job_id"])["job"]["hosts"][0]["stats"]
    assert stats["anomaly_s"] >= 0 and stats["profile"]["new"] >= 1

    # The attacks, with snapshots that retention deletes planted in every host: the very run that
    # records an attack deletes none of its host's; the calm host's run deletes its own.
    for name, source in sources.items():
        for old in OLD:
            (daemon.workdir / "backup" / name / "hourly" / old).mkdir()
        if name in VICTIMS:
            source.attack(VICTIMS[name])
        else:
            source.ordinary_round(16)
    job = daemon.run_snapshot()
    assert job["status"] == "ok"
    suspect = {run["host"]: run["snapshot"] for run in job["hosts"]}
    spikes = {run["host"]: {s["signal"] for s in run["stats"]["anomaly"]["signals"] if s["spike"]}
              for run in job["hosts"]}
    assert spikes == {"enc": {"became_random"}, "ren": {"renamed", "note"}, "del": {"deleted"}, "calm": set()}
    for host in VICTIMS:
        assert set(OLD) <= set(snapshots(daemon, host))
    assert not set(OLD) & set(snapshots(daemon, "calm"))
    alerts = wait_until(lambda: len(anomaly_alerts(daemon)) == 3 and {a["host"]: a for a in anomaly_alerts(daemon)},
                        what="three anomaly alerts")
    for host, alert in alerts.items():
        assert alert["subject"] == suspect[host] and alert["count"] == 1
        assert f"snapshot {suspect[host]} is suspect" in alert["message"] and "bkctl hosts release" in alert["message"]
    encrypted = next(s for s in daemon.call("snapshots.list", host="enc")["snapshots"] if s["name"] == suspect["enc"])
    assert encrypted["suspect"] and encrypted["profile"]["became_random"] >= 300
    signal_of = {s["signal"]: s for s in encrypted["anomaly"]["signals"]}["became_random"]
    assert signal_of["spike"] and signal_of["value"] > signal_of["threshold"] and signal_of["snapshots"] == 15
    alert_ids = {host: alert["id"] for host, alert in alerts.items()}
    assert_held(daemon, suspect, alert_ids)

    # What people read: the mark in listings, the reasons, the names for admins.
    listing = daemon.bkctl("snapshots", "enc")
    assert listing.returncode == 0 and "SUSPECT" in listing.stdout and "files became random" in listing.stdout
    ls = daemon.bkctl("ls", "ren", suspect["ren"])
    assert ls.returncode == 0 and "SUSPECT" in ls.stdout.splitlines()[0]
    holds = daemon.bkctl("holds")
    assert holds.returncode == 0 and "README-DECRYPT.txt" in holds.stdout and "locked" in holds.stdout
    assert "keep (held)" in daemon.bkctl("prune", "--dry-run", "del").stdout

    # bkctl prune, archive and monthly expiry delete nothing of a held host either.
    pruned = daemon.bkctl_json("prune")["plan"]
    assert not any(d["action"] == "delete" for host in VICTIMS for d in pruned[host])
    archives, monthly = daemon.workdir / "backup/del/archives", daemon.workdir / "backup/del/monthly"
    archives.mkdir()
    for old in OLD:
        (archives / f"del_{old}.tar.zst").write_bytes(b"old")
    (monthly / "2020-01").mkdir(parents=True)
    for kind in ("archive", "monthly"):
        assert daemon.bkctl("run", "del", "--kind", kind, "--wait").returncode == 0
    assert {f"del_{old}.tar.zst" for old in OLD} <= {p.name for p in archives.iterdir()}
    assert (monthly / "2020-01").is_dir()

    # A reload, a restart and a crash: the holds, the marks and the alerts stay.
    daemon.config["anomaly"] = {"factor": 12.0}
    daemon.write_config()
    assert daemon.bkctl("reload").returncode == 0
    assert_held(daemon, suspect, alert_ids)
    assert daemon.stop() == 0
    daemon.start()
    assert_held(daemon, suspect, alert_ids)
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait()
    (daemon.workdir / "state" / "bkd.sqlite").unlink()  # and a database rebuilt from the backup root
    for extra in ("-wal", "-shm"):
        (daemon.workdir / "state" / f"bkd.sqlite{extra}").unlink(missing_ok=True)
    daemon.start()
    wait_until(lambda: len(anomaly_alerts(daemon)) == 3, what="the alerts raised again from the hold records")
    alert_ids = {a["host"]: a["id"] for a in anomaly_alerts(daemon)}
    assert_held(daemon, suspect, alert_ids)
    assert all(s["suspect"] == (s["name"] == suspect["enc"]) for s in daemon.call("snapshots.list", host="enc")[
        "snapshots"] if s["name"] not in OLD)

    # Backups go on: the next snapshots are no anomaly, the hosts stay held on the first.
    for source in sources.values():
        source.clock += 3600
        source.write("var/log/syslog", source.text(100), append=True)
    assert daemon.run_snapshot()["status"] == "ok"
    assert_held(daemon, suspect, alert_ids)

    # A release lifts one hold, audited, and resolves its alert; the mark stays.
    released = daemon.bkctl("hosts", "release", "del", "--note", "checked: the deletion was an attack, restored",
                            "--json")
    assert released.returncode == 0, released.stderr
    answer, result_type = json.loads(released.stdout), method_table(Api())["hosts.release"].result
    assert result_type.__required_keys__ <= set(answer) <= set(result_type.__annotations__)  # as tests/e2e/test_results
    assert answer["released"] and answer["host"] == "del" and answer["snapshots"] == [suspect["del"]]
    assert "del" not in held(daemon) and "del" not in {a["host"] for a in anomaly_alerts(daemon)}
    assert [a["state"] for a in anomaly_alerts(daemon, every=True) if a["host"] == "del"] == ["resolved"]
    entry = next(e for e in daemon.call("audit.list", limit=20)["entries"] if e["method"] == "hosts.release")
    assert entry["params"] == {"host": "del", "note": "checked: the deletion was an attack, restored"}
    assert entry["outcome"] == "ok"
    assert daemon.bkctl("hosts", "release", "del").returncode == 1  # nothing left to release
    assert next(s for s in daemon.call("snapshots.list", host="del")["snapshots"]
                if s["name"] == suspect["del"])["suspect"]
    for kind in ("archive", "monthly"):
        assert daemon.bkctl("run", "del", "--kind", kind, "--wait").returncode == 0
    assert not {f"del_{old}.tar.zst" for old in OLD} & {p.name for p in archives.iterdir()}
    assert not (monthly / "2020-01").exists()
    assert set(OLD) <= set(snapshots(daemon, "del"))  # until the next prune
    assert "deleted 2" in daemon.bkctl("prune").stdout
    assert not set(OLD) & set(snapshots(daemon, "del")) and set(OLD) <= set(snapshots(daemon, "enc"))
    for host in ("enc", "ren"):
        assert daemon.bkctl("hosts", "release", host).returncode == 0
    assert held(daemon) == {} and anomaly_alerts(daemon) == []
    check = daemon.bkctl("check")  # (critical still for the audit log: its database was removed above)
    assert "held" not in check.stdout and "anomaly" not in check.stdout
    assert json.loads(daemon.bkctl("--json", "holds").stdout) == {"holds": []}
