"""bkd never backs up itself: a source holding the backup root or state_dir
(locally, or this very machine over SSH) gets them excluded, `hosts` says so,
and a restore never writes into them."""

import json
import os
import pwd

from bkd.selfguard import inside_source
from conftest import make_tree


def files_in(snapshot) -> set[str]:
    return {str(p.relative_to(snapshot)) for p in snapshot.rglob("*")}


def test_excludes_are_anchored_at_the_source_and_only_for_what_it_holds(tmp_path):
    from pathlib import Path
    own = [Path("/srv/bkd"), Path("/var/lib/bkd")]
    assert inside_source("/", own) == ["/srv/bkd", "/var/lib/bkd"]
    assert inside_source("/srv/", own) == ["/bkd"]
    assert inside_source("/srv/bkd", own) == []  # the backup root itself as a source: not "inside"
    assert inside_source("/home", own) == []


def test_a_local_source_that_holds_bkds_own_directories_never_copies_them(tmp_path, daemon_factory):
    daemon = daemon_factory([], name="d")
    workdir = daemon.workdir  # holds backup/ and state/
    make_tree(workdir / "data", 5)
    daemon.config["host"] = [{"name": "self", "source": str(workdir)}]
    daemon.write_config()
    daemon.start()
    counts = []
    for _ in range(4):
        job = daemon.run_snapshot()
        assert job["status"] == "ok", job
        counts.append(job["hosts"][0]["stats"]["files"])
    latest = workdir / "backup/self/latest"
    names = files_in(latest)
    assert not any(n == "backup" or n.startswith(("backup/", "state/")) or n == "state" for n in names)
    assert "data/dir0/file0.txt" in names
    assert len(set(counts)) == 1, counts  # no growth: 16 → 50 → 136 … happened before
    (host,) = daemon.bkctl_json("hosts")["hosts"]
    assert host["this_machine"] is True and host["self_excluded"] == ["/backup", "/state"]
    assert {"/backup", "/state"} <= set(host["excludes"])


def test_this_machine_over_ssh_is_recognised_and_excluded(tmp_path, daemon_factory, ssh_fleet):
    daemon = daemon_factory([], name="d")
    workdir = daemon.workdir
    make_tree(workdir / "data", 3)
    ssh_fleet.add_host("loop")
    daemon.config.update(host=[{"name": "loop", "source": f"loop:{workdir}"}],
                         ssh=ssh_fleet.ssh_settings(options=["ConnectTimeout=3"],
                                                    restore_identity_file=str(ssh_fleet.client_key)))
    daemon.write_config()
    daemon.start()
    (host,) = daemon.bkctl_json("hosts")["hosts"]
    assert host["this_machine"] is None and "not known yet" in host["identity"]
    assert daemon.run_snapshot()["status"] == "ok"
    assert not {"backup", "state"} & {p.name for p in (workdir / "backup/loop/latest").iterdir()}
    (host,) = daemon.bkctl_json("hosts")["hosts"]
    assert host["this_machine"] is True and host["self_excluded"] == ["/backup", "/state"]
    tested = daemon.bkctl_json("hosts", "test", "loop")["results"]["loop"]
    assert tested["ok"] and tested["this_machine"] is True and "marker" in tested["identity"]

    # A restore to this machine over SSH never writes into the backup root.
    snapshot = daemon.call("status")["hosts"]["loop"]["last_snapshot"]
    into = workdir / "backup/loop/hourly" / snapshot
    refused = daemon.bkctl("restore", "loop", "latest", "/data", "--to", f"loop:{into}", "--overwrite")
    assert refused.returncode == 1 and "is inside the backup root" in refused.stderr
    assert daemon.bkctl("verify", "loop", "--all").returncode == 0

    # A host that cannot be asked: nothing is excluded, and hosts says why.
    ssh_fleet.kill("loop")
    tested = json.loads(daemon.bkctl("--json", "hosts", "test", "loop").stdout)["results"]["loop"]
    assert not tested["ok"] and tested["this_machine"] is None and "nothing of bkd's own is excluded" in \
        tested["identity"]


def test_an_ipv6_literal_source_is_one_host_to_rsync_ssh_and_the_self_check(tmp_path, daemon_factory, ssh_fleet):
    # Issue 17 item 10: `user@[fe80::1]:/srv` was accepted, but the ssh master
    # and the self-exclusion check cut it to `user@[fe80`: the shared
    # connection went to the wrong name and "is it this machine?" had no answer.
    daemon = daemon_factory([], name="d")
    workdir = daemon.workdir
    make_tree(workdir / "data", 6)
    ssh_fleet.add_host("::1", address="::1")  # sshd on [::1]; the ssh config gives the port for "::1"
    connections = tmp_path / "connections"
    with ssh_fleet.ssh_config.open("a") as f:  # runs once per new connection, not for a shared one
        f.write(f"Host *\n  PermitLocalCommand yes\n  LocalCommand echo connected >> {connections}\n")
    user = pwd.getpwuid(os.geteuid()).pw_name
    daemon.config.update(host=[{"name": "v6", "source": f"{user}@[::1]:{workdir}/"}],
                         ssh=ssh_fleet.ssh_settings(options=["ConnectTimeout=3"],
                                                    restore_identity_file=str(ssh_fleet.client_key)))
    daemon.write_config()
    daemon.start()

    first = daemon.run_snapshot()
    assert first["status"] == "ok", first
    latest = workdir / "backup/v6/latest"
    assert not {"backup", "state"} & {p.name for p in latest.iterdir()}  # this machine: bkd's own left out
    assert (latest / "data/dir0/file0.txt").exists()
    (host,) = daemon.bkctl_json("hosts")["hosts"]
    assert host["this_machine"] is True and "marker" in host["identity"]
    assert host["self_excluded"] == ["/backup", "/state"]
    before = connections.read_text().count("connected")

    (workdir / "data/dir1/file1.txt").write_text("changed\n")
    (workdir / "new").write_text("new\n")
    mtime = (previous := workdir / "backup/v6/hourly" / first["hosts"][0]["snapshot"]).stat().st_mtime + 10
    os.utime(workdir, (mtime, mtime))  # the top directory surely changed: its own pass runs too
    second = daemon.run_snapshot()
    assert second["status"] == "ok", second
    # Incremental: the compare's own connection, and the master that the copy
    # and the top directory's pass share (without it: one each).
    assert connections.read_text().count("connected") - before == 2
    assert second["hosts"][0]["stats"]["changed_files"] <= 3  # data/dir1/file1.txt, new, daemon.log
    assert (latest / "new").read_text() == "new\n"
    assert (latest / "data/dir0/file0.txt").stat().st_ino == (previous / "data/dir0/file0.txt").stat().st_ino
    assert (latest / "data/dir1/file1.txt").read_text() == "changed\n"

    tested = daemon.bkctl_json("hosts", "test", "v6")["results"]["v6"]
    assert tested["ok"] and tested["this_machine"] is True, tested

    # A restore to [::1]:DEST goes to the same host, and never into the backup root.
    restored = tmp_path / "restored"
    result = daemon.bkctl("restore", "v6", "latest", "/data/dir1", "--to", f"{user}@[::1]:{restored}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (restored / "data/dir1/file1.txt").read_text() == "changed\n"
    refused = daemon.bkctl("restore", "v6", "latest", "/data", "--to", f"[::1]:{workdir}/backup/v6")
    assert refused.returncode == 1 and "is inside the backup root" in refused.stderr
