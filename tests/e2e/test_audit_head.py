"""The audit log's newest entries cannot be removed unnoticed: the chain's
head is anchored in {backup_root}/.bkd-audit-head. Issue 11, defect 6: with
the 5 newest rows deleted while the daemon was stopped, `audit --verify`
still said the chain was intact."""

import json
import os
import shutil
import sqlite3
import subprocess

import pytest

from conftest import BIN, make_tree


@pytest.fixture
def daemon(tmp_path, daemon_factory):
    return daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "src", 3))}]).start()


def audited_calls(daemon, count: int) -> None:
    for _ in range(count):
        daemon.call("alerts.ack", all=True)  # mutating: one audit entry each


def database(daemon):
    return sqlite3.connect(daemon.workdir / "state" / "bkd.sqlite")


def head(daemon) -> dict:
    return json.loads((daemon.workdir / "backup" / ".bkd-audit-head").read_text())


def reanchor(daemon) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "bkd"), "--config", str(daemon.config_path), "audit", "reanchor"],
                          capture_output=True, text=True, timeout=60)


def test_removing_the_newest_entries_is_detected_until_an_admin_reanchors(daemon):
    audited_calls(daemon, 8)
    assert head(daemon)["id"] == 8
    journal = [json.loads(line) for line in daemon.log().splitlines() if '"audit.entry"' in line]
    assert [(e["id"], e["hash"]) for e in journal][-1] == (8, head(daemon)["hash"])  # the journal's copy
    assert daemon.bkctl("audit", "--verify").returncode == 0
    daemon.stop()
    with database(daemon) as db:
        db.execute("DELETE FROM audit WHERE id > 3")  # the newest five, while the daemon is stopped

    daemon.start()
    assert "audit.head_mismatch" in daemon.log()
    audited_calls(daemon, 2)  # new entries do not paper over the gap
    human = daemon.bkctl("audit", "--verify")
    assert human.returncode == 1
    assert "hash chain: BROKEN: the newest audit entries were removed: the head record " in human.stdout
    assert "names entry 8, which the database does not hold (its newest is entry 10);" in human.stdout
    assert "bkd audit reanchor" in human.stdout
    assert json.loads(daemon.bkctl("--json", "audit", "--verify").stdout)["chain_ok"] is False

    running = reanchor(daemon)  # it takes the daemon's locks: refused while bkd runs
    assert running.returncode == 1 and "already running" in running.stderr and len(running.stderr.splitlines()) == 1
    daemon.stop()
    done = reanchor(daemon)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("re-anchored the audit log at entry 11 (the head record named entry 8; "
                                   "the database ended at entry 10)")
    daemon.start()
    assert daemon.bkctl("audit", "--verify").returncode == 0
    newest = daemon.bkctl_json("audit", "--limit", "1")["entries"][0]
    assert newest["method"] == "audit.reanchor" and newest["uid"] == 0  # the re-anchoring is on record
    assert newest["params"]["previous_head"]["id"] == 8 and newest["params"]["database_head"]["id"] == 10


def test_a_deliberately_rebuilt_state_database_is_reanchored(daemon):
    audited_calls(daemon, 3)
    daemon.stop()
    state = daemon.workdir / "state"
    shutil.move(state / "bkd.sqlite", daemon.workdir / "bkd.sqlite.broken")  # what StoreUnusable tells admins
    for extra in state.glob("bkd.sqlite-*"):
        extra.unlink()
    daemon.start()
    broken = daemon.bkctl("audit", "--verify")
    assert broken.returncode == 1 and "names entry 3, which the database does not hold (it holds no entries)" in broken.stdout
    daemon.stop()
    assert reanchor(daemon).returncode == 0
    daemon.start()
    assert daemon.bkctl("audit", "--verify").returncode == 0


def test_a_missing_head_record_and_rows_removed_under_a_running_daemon_are_detected(daemon):
    audited_calls(daemon, 3)
    with database(daemon) as db:
        db.execute("DELETE FROM audit WHERE id = 3")  # the newest, while the daemon runs
    audited_calls(daemon, 1)  # the daemon notices its head is gone from the table and stops moving it
    assert "audit.head_mismatch" in daemon.log()
    assert daemon.bkctl("audit", "--verify").returncode == 1
    daemon.stop()
    assert reanchor(daemon).returncode == 0
    (daemon.workdir / "backup" / ".bkd-audit-head").unlink()
    daemon.start()
    missing = daemon.bkctl("audit", "--verify")
    assert missing.returncode == 1 and ".bkd-audit-head is missing" in missing.stdout


def test_a_head_one_entry_behind_is_a_stop_between_commit_and_head_and_is_advanced(daemon):
    audited_calls(daemon, 2)
    behind = (daemon.workdir / "backup" / ".bkd-audit-head").read_text()
    audited_calls(daemon, 1)
    daemon.stop()
    (daemon.workdir / "backup" / ".bkd-audit-head").write_text(behind)
    daemon.start()
    assert "audit.head_advanced" in daemon.log()
    assert daemon.bkctl("audit", "--verify").returncode == 0
    assert head(daemon)["id"] == 3


def test_a_changed_entry_still_names_the_entry(daemon):
    audited_calls(daemon, 3)
    with database(daemon) as db:
        db.execute("UPDATE audit SET outcome = 'forged' WHERE id = 2")
    result = daemon.bkctl("audit", "--verify")
    assert result.returncode == 1 and "BROKEN at entry 2" in result.stdout
    daemon.stop()
    refused = reanchor(daemon)  # re-anchoring must not bless a changed log
    assert refused.returncode == 1
    assert refused.stderr.strip() == ("bkd audit reanchor: the hash chain breaks at entry 2 (an entry was "
                                      "changed, removed or inserted); not re-anchoring a changed log")


def test_reanchor_runs_only_as_the_user_the_daemon_runs_as(daemon, tmp_path):
    daemon.stop()
    for directory in ("state", "backup"):
        os.chown(daemon.workdir / directory, 65534, 65534)  # as if bkd ran as nobody
    wrong = reanchor(daemon)
    assert wrong.returncode == 1
    assert wrong.stderr.strip() == (f"bkd audit reanchor: {daemon.workdir / 'state'} belongs to nobody: run this as "
                                    "the user bkd runs as (sudo -u nobody bkd audit reanchor)")
