"""Roles per method from the caller's SO_PEERCRED uid and groups, and the
hash-chained audit log. Other users are made with setpriv: nothing is added
to the machine's user or group databases."""

import grp
import json
import os
import sqlite3
import subprocess

import pytest

from conftest import BIN, make_tree

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="acting as other users needs root (CI runs as root)")

UID = 4242  # no such user: the daemon names it by number


def as_user(daemon, groups: list[str], *args: str) -> subprocess.CompletedProcess:
    socket_gid = daemon.socket.stat().st_gid  # to reach the 0660 socket at all
    gids = [socket_gid] + [grp.getgrnam(name).gr_gid for name in groups]
    return subprocess.run(
        ["setpriv", f"--reuid={UID}", f"--regid={UID}", f"--groups={','.join(map(str, gids))}", "--",
         str(BIN / "bkctl"), "--socket", str(daemon.socket), *args],
        capture_output=True, text=True, timeout=120)


@pytest.fixture
def daemon(tmp_path, short_tmp, daemon_factory):
    short_tmp.chmod(0o711)  # let the other uid reach the socket in it
    return daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "s", 3))}],
                          access={"viewers": ["audio"], "operators": ["video"], "admins": ["staff"]}).start()


def test_each_role_may_do_what_it_may_and_no_more(daemon):
    assert as_user(daemon, ["audio"], "status").returncode == 0
    denied = as_user(daemon, ["audio"], "run", "web1")
    assert denied.returncode == 1
    assert f"permission denied: job.start needs the operator role; {UID} (uid {UID}) has the viewer role" \
        in denied.stderr
    assert as_user(daemon, ["audio"], "ls", "web1").returncode == 1

    assert as_user(daemon, ["video"], "run", "web1", "--wait").returncode == 0
    refused = as_user(daemon, ["video"], "prune")
    assert refused.returncode == 1 and "prune needs the admin role" in refused.stderr
    both = as_user(daemon, ["audio", "video", "staff"], "prune", "--dry-run")  # the highest role counts
    assert both.returncode == 0, both.stderr

    nobody = as_user(daemon, [], "status")
    assert nobody.returncode == 1 and "has no role" in nobody.stderr
    assert daemon.bkctl("ls", "web1").returncode == 0  # root is admin


def test_mutating_calls_are_audited_in_a_hash_chain_that_shows_tampering(daemon):
    as_user(daemon, ["audio"], "run", "web1")   # refused, and recorded
    as_user(daemon, ["video"], "run", "web1", "--wait")
    daemon.bkctl("reload")
    daemon.bkctl("status")                      # reads are not audited

    result = daemon.bkctl_json("audit", "--verify")
    assert result["chain_ok"] is True
    entries = list(reversed(result["entries"]))
    assert [(e["uid"], e["method"], e["outcome"].split(":")[0]) for e in entries] == [
        (UID, "job.start", "error -32003"), (UID, "job.start", "ok"), (0, "config.reload", "ok")]
    assert entries[1]["params"] == {"hosts": ["web1"], "kind": "snapshot", "dry_run": False}
    human = daemon.bkctl("audit", "--verify")
    assert human.returncode == 0 and "hash chain: intact" in human.stdout

    with sqlite3.connect(daemon.workdir / "state" / "bkd.sqlite") as db:  # the evidence, rewritten
        db.execute("UPDATE audit SET outcome = 'ok' WHERE id = ?", (entries[0]["id"],))
    tampered = daemon.bkctl("audit", "--verify")
    assert tampered.returncode == 1
    assert f"BROKEN at entry {entries[0]['id']}" in tampered.stdout
    assert json.loads(daemon.bkctl("--json", "audit", "--verify").stdout)["chain_ok"] is False
