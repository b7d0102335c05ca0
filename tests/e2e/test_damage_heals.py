"""Damage heals forward (SPEC §7): a byte flipped in the newest snapshot's
copy (size and mtime kept, so rsync's quick check sees nothing) is fetched
again in full by the next run, as a fresh inode; the `integrity` alert names
the older snapshots that still share the damaged copy and resolves once
they are pruned. A snapshot pruned during a verify is gone, not damaged."""

import json
import os
import shutil
import subprocess
import threading

import pytest

from changers import flip_byte
from conftest import BIN, make_tree, wait_until

DAMAGED = "dir1/file5.txt"


def _integrity(daemon, everything: bool = False) -> list[dict]:
    alerts = daemon.bkctl_json("alerts", *(["--all"] if everything else []))["alerts"]
    # Of snapshots: a rebuilt database also re-anchors the audit log, an integrity alert of its own.
    return [a for a in alerts if a["kind"] == "integrity" and a.get("subject") != "audit log"]


def _retain_only_the_newest(daemon) -> None:
    daemon.config["retention"] = {"hourly_hours": 0, "daily_days": 0, "monthly_months": 0}
    daemon.write_config()
    assert daemon.bkctl("reload").returncode == 0


@pytest.mark.parametrize("how", ["incremental", "resumed", "over ssh", "incremental, mode changed",
                                 "resumed, mode changed"])
def test_a_flipped_byte_in_the_newest_snapshot_heals_in_the_next_run(how, tmp_path, daemon_factory, request):
    source = make_tree(tmp_path / "source", 12)
    # Long ago: rsync leaves a directory time that is in the same second as the source's as it is.
    os.utime(source / DAMAGED.split("/")[0], (1_000_000_000, 1_000_000_000))
    if how == "over ssh":
        fleet = request.getfixturevalue("ssh_fleet")
        fleet.add_host("web1")
        daemon = daemon_factory([{"name": "web1", "source": f"web1:{source}/"}], ssh=fleet.ssh_settings())
    else:
        daemon = daemon_factory([{"name": "web1", "source": str(source)}])
    daemon.start()
    hourly = daemon.workdir / "backup/web1/hourly"
    first = daemon.run_snapshot()["hosts"][0]["snapshot"]
    second = daemon.run_snapshot()["hosts"][0]["snapshot"]
    assert (hourly / first / DAMAGED).stat().st_ino == (hourly / second / DAMAGED).stat().st_ino
    flip_byte(hourly / second / DAMAGED)  # the one inode both snapshots hold

    found = daemon.bkctl("--json", "verify", "web1")
    assert found.returncode == 1
    assert [(m["snapshot"], m["path"], m["problem"]) for m in json.loads(found.stdout)["mismatches"]] == [
        (second, DAMAGED, "changed")]
    (alert,) = _integrity(daemon)
    assert alert["subject"] == second
    assert alert["message"] == (f"1 file(s) of snapshot {second} do not match its manifest (bkctl verify web1 "
                                f"{second}); the damaged copies are also in 1 other snapshot(s): {first}")

    if how.startswith("resumed"):  # an interrupted run left a partial: the next one takes the --link-dest path
        (hourly / ".partial-2000-01-01_000000-abcdef").mkdir()
    if how.endswith("mode changed"):  # rsync would copy the damaged file to give it the new mode
        (source / DAMAGED).chmod(0o600)
    job = daemon.run_snapshot()
    assert job["status"] == "ok", job
    third = job["hosts"][0]["snapshot"]
    healed = hourly / third / DAMAGED
    assert healed.read_bytes() == (source / DAMAGED).read_bytes()
    assert healed.stat().st_ino != (hourly / second / DAMAGED).stat().st_ino
    assert healed.stat().st_mode & 0o777 == (source / DAMAGED).stat().st_mode & 0o777
    assert healed.parent.stat().st_mtime_ns == (source / DAMAGED).parent.stat().st_mtime_ns  # its directory's too
    assert job["hosts"][0]["stats"]["refetched_files"] == 1
    assert daemon.bkctl("verify", "web1", third).returncode == 0

    # Every snapshot: the damaged copy is in two, and is one alert naming the other.
    everything = daemon.bkctl("--json", "verify", "web1", "--all")
    assert everything.returncode == 1
    assert sorted((m["snapshot"], m["path"]) for m in json.loads(everything.stdout)["mismatches"]) == [
        (first, DAMAGED), (second, DAMAGED)]
    (alert,) = _integrity(daemon)
    assert alert["subject"] == second and alert["message"].endswith(f"also in 1 other snapshot(s): {first}")
    assert "file5" not in json.dumps(alert)  # every role reads alerts: no file names

    # The next runs do not fetch it again: the newest copy is good.
    again = daemon.run_snapshot()
    assert again["status"] == "ok" and "refetched_files" not in again["hosts"][0]["stats"]

    _retain_only_the_newest(daemon)
    plan = daemon.bkctl_json("prune", "web1")["plan"]["web1"]
    assert {d["snapshot"] for d in plan if d["action"] == "delete"} >= {first, second}
    assert _integrity(daemon) == []
    (resolved,) = _integrity(daemon, everything=True)
    assert resolved["state"] == "resolved" and resolved["subject"] == second
    assert not (daemon.workdir / "backup/web1/meta/damage.json").exists()


def test_a_truncated_copy_found_by_the_sample_pass_goes_the_same_way_and_names_its_sharers(tmp_path,
                                                                                            daemon_factory):
    source = make_tree(tmp_path / "source", 12)
    daemon = daemon_factory([{"name": "web1", "source": str(source)}], verify={"sample_percent": 100}).start()
    hourly = daemon.workdir / "backup/web1/hourly"
    names = [daemon.run_snapshot()["hosts"][0]["snapshot"] for _ in range(3)]
    os.truncate(hourly / names[-1] / DAMAGED, 3)

    assert daemon.bkctl("verify", "web1", "--sample").returncode == 1
    (alert,) = _integrity(daemon)
    assert alert["subject"] == names[-1]
    assert alert["message"].endswith(f"also in 2 other snapshot(s): {names[0]}, {names[1]}")
    job = daemon.run_snapshot()
    healed = hourly / job["hosts"][0]["snapshot"] / DAMAGED
    assert healed.read_bytes() == (source / DAMAGED).read_bytes()
    assert job["hosts"][0]["stats"]["refetched_files"] == 1
    assert daemon.bkctl("verify", "web1", "--all").returncode == 1
    assert [a["subject"] for a in _integrity(daemon)] == [names[-1]]  # one alert for one damaged copy


def test_what_is_to_be_fetched_again_survives_a_restart_with_a_rebuilt_database(tmp_path, daemon_factory):
    source = make_tree(tmp_path / "source", 12)
    daemon = daemon_factory([{"name": "web1", "source": str(source)}]).start()
    hourly = daemon.workdir / "backup/web1/hourly"
    daemon.run_snapshot()
    damaged = daemon.run_snapshot()["hosts"][0]["snapshot"]
    flip_byte(hourly / damaged / DAMAGED)
    assert daemon.bkctl("verify", "web1").returncode == 1

    assert daemon.stop() == 0
    state = daemon.workdir / "state"
    shutil.rmtree(state)  # the state database (and the version index) is lost; meta/ is the truth
    state.mkdir(mode=0o700)
    daemon.start()
    # The alert comes back from meta/ (the sampler settles every host as it starts) ...
    (alert,) = wait_until(lambda: _integrity(daemon), 30, what="the integrity alert from meta/")
    assert alert["subject"] == damaged
    # ... and the next run heals the newest copy.
    job = daemon.run_snapshot()
    assert job["hosts"][0]["stats"]["refetched_files"] == 1
    assert (hourly / job["hosts"][0]["snapshot"] / DAMAGED).read_bytes() == (source / DAMAGED).read_bytes()


def test_verify_all_racing_a_prune_raises_no_alert_and_clears_those_of_pruned_snapshots(tmp_path, daemon_factory):
    """`verify --all` over many snapshots while a prune takes most of them:
    the pruned ones are `gone`, not "no manifest recorded", and no integrity
    alert opens. An alert of a snapshot that is pruned resolves."""
    source = tmp_path / "source"
    source.mkdir()
    (source / "big.bin").write_bytes(os.urandom(48 * 1024 * 1024))  # each snapshot takes a while to hash
    daemon = daemon_factory([{"name": "web1", "source": str(source)}]).start()
    hourly = daemon.workdir / "backup/web1/hourly"
    names = []
    for index in range(24):
        (source / "own.txt").write_text("x" * (index + 1))  # a copy of its own in each snapshot
        names.append(daemon.run_snapshot()["hosts"][0]["snapshot"])
    os.truncate(hourly / names[0] / "own.txt", 0)  # one real mismatch, in a snapshot the prune takes
    assert daemon.bkctl("verify", "web1", names[0]).returncode == 1
    assert [a["subject"] for a in _integrity(daemon)] == [names[0]]
    _retain_only_the_newest(daemon)

    verify = subprocess.Popen([str(BIN / "bkctl"), "--socket", str(daemon.socket), "--json", "verify", "web1",
                               "--all"], stdout=subprocess.PIPE, text=True)
    wait_until(lambda: daemon.log().count('"verify.start"') == 2, 30, what="the verify to start")
    pruned = {d["snapshot"] for d in daemon.call("prune", hosts=["web1"])["plan"]["web1"] if d["action"] == "delete"}
    result = json.loads(verify.communicate(timeout=120)[0])
    assert verify.returncode == 0, result
    assert pruned == set(names[:-1])
    assert set(result["gone"]) == pruned  # listed when the verify began, pruned before their turn
    assert names[-1] in result["snapshots"] and result["mismatches"] == []
    assert _integrity(daemon) == []  # no false alert, and the pruned snapshot's real one resolved


def test_an_alert_of_a_snapshot_removed_while_the_daemon_was_down_resolves_at_start(tmp_path, daemon_factory):
    """What an earlier version's prune left open ("no manifest recorded" for
    a snapshot it took) is settled by the next start."""
    source = make_tree(tmp_path / "source", 4)
    daemon = daemon_factory([{"name": "web1", "source": str(source)}]).start()
    backup = daemon.workdir / "backup/web1"
    old = daemon.run_snapshot()["hosts"][0]["snapshot"]
    (source / "new.txt").write_text("new\n")
    daemon.run_snapshot()
    (backup / "meta" / f"{old}.manifest").unlink()
    assert daemon.bkctl("verify", "web1", old).returncode == 1
    assert [(a["subject"], a["state"]) for a in _integrity(daemon)] == [(old, "open")]

    assert daemon.stop() == 0
    (backup / ".trash").mkdir()
    (backup / "hourly" / old).rename(backup / ".trash" / old)
    daemon.start()
    wait_until(lambda: not _integrity(daemon), 30, what="the alert of the pruned snapshot to resolve")
    assert [(a["subject"], a["state"]) for a in _integrity(daemon, everything=True)] == [(old, "resolved")]
