"""bkd never backs up itself: a source holding the backup root or state_dir
(locally, or this very machine over SSH) gets them excluded, `hosts` says so,
and a restore never writes into them."""

import json

from bkd.selfguard import excludes_for
from conftest import make_tree


def files_in(snapshot) -> set[str]:
    return {str(p.relative_to(snapshot)) for p in snapshot.rglob("*")}


def test_excludes_are_anchored_at_the_source_and_only_for_what_it_holds(tmp_path):
    from pathlib import Path
    own = [Path("/srv/bkd"), Path("/var/lib/bkd")]
    assert excludes_for("/", own) == ["/srv/bkd", "/var/lib/bkd"]
    assert excludes_for("/srv/", own) == ["/bkd"]
    assert excludes_for("/srv/bkd", own) == []  # the backup root itself as a source: not "inside"
    assert excludes_for("/home", own) == []


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
                         ssh=ssh_fleet.ssh_settings(options=["ConnectTimeout=3"]))
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
