"""Issue 18, item 10: root on the server could make the audit log lie without
`audit --verify` noticing — the head record rewritten to match a truncated
log; the head record and its `audit.anchored` marker deleted (a silent
re-anchor); every hash recomputed after an edit; everything wiped. Each is
now detectable from outside: the journal's copy of every entry's hash is
compared (auditwitness.py), every anchoring is an audited entry and an
`integrity` alert, and the head travels in every notification and report.

Here the journal is a file the test controls, read by a `journalctl` first
on the daemon's PATH (the daemon's own audit.entry lines, as journald would
hold them); test_real_journal.py does the same against a real journald."""

import json
import os
import shutil
import sqlite3
import subprocess
import textwrap

import pytest

from bkd.store.audit import audit_hash
from conftest import BIN, make_tree, wait_until
from journal import FakeJournal


class Witness:
    """A fake journalctl that prints the JSON lines of a file; the test decides what the journal holds."""

    def __init__(self, root):
        self.bin = root / "bin"
        self.bin.mkdir()
        self.records = root / "journal.json"
        self.records.write_text("")
        script = self.bin / "journalctl"
        script.write_text(f"#!/bin/sh\nexec cat {self.records}\n")
        script.chmod(0o755)

    def env(self) -> dict:
        return {"PATH": f"{self.bin}:{os.environ['PATH']}"}

    def keep(self, entries: list[dict], anchor) -> None:
        """What journald would hold of these audit.entry events (with the uid it records)."""
        with self.records.open("a") as f:
            for e in entries:
                f.write(json.dumps({"_UID": str(os.getuid()), "BKD_ID": str(e["id"]), "BKD_HASH": e["hash"],
                                    "BKD_METHOD": e["method"], "BKD_ANCHOR": str(anchor),
                                    "__REALTIME_TIMESTAMP": "1"}) + "\n")


def logged_entries(daemon) -> list[dict]:
    """The daemon's audit.entry events (its log is JSON lines here)."""
    return [json.loads(line) for line in daemon.log().splitlines() if '"audit.entry"' in line]


@pytest.fixture
def setup(tmp_path, daemon_factory):
    witness = Witness(tmp_path)
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "src", 3))}])
    daemon.start(env=witness.env())
    for _ in range(8):
        daemon.call("alerts.ack", all=True)  # mutating: one audit entry each
    witness.keep(logged_entries(daemon), head_path(daemon))
    assert daemon.bkctl("audit", "--verify").returncode == 0
    daemon.stop()
    return daemon, witness


def db(daemon):
    return sqlite3.connect(daemon.workdir / "state" / "bkd.sqlite")


def head_path(daemon):
    return daemon.workdir / "backup" / ".bkd-audit-head"


def audit_alerts(daemon) -> list[str]:
    return [a["message"] for a in daemon.call("alerts.list")["alerts"]
            if a["kind"] == "integrity" and a["subject"] == "audit log"]


def test_a_head_rewritten_to_match_a_truncated_log_is_caught_by_the_journal(setup):
    daemon, witness = setup
    with db(daemon) as conn:
        conn.execute("DELETE FROM audit WHERE id > 3")
        three = conn.execute("SELECT hash FROM audit WHERE id = 3").fetchone()[0]
    head_path(daemon).write_text(json.dumps({"id": 3, "hash": three, "time": "x"}) + "\n")  # it matches now
    daemon.start(env=witness.env())
    verdict = daemon.bkctl("audit", "--verify")
    assert verdict.returncode == 1, verdict.stdout
    assert ("the journal recorded audit 5 entries from 4 to 8, which the database does not hold (its newest is "
            "entry 3): entries were removed") in verdict.stdout
    assert "compared with 8 record(s) in the journal" in verdict.stdout
    wait_until(lambda: audit_alerts(daemon), 20, what="the audit log's alert")  # the start's own check


def test_deleting_the_head_record_and_its_marker_is_an_audited_re_anchoring_and_an_alert(setup):
    daemon, witness = setup
    head_path(daemon).unlink()
    with db(daemon) as conn:
        conn.execute("DELETE FROM kv WHERE key = 'audit.anchored'")
    daemon.start(env=witness.env())
    alerts = wait_until(lambda: audit_alerts(daemon), 20, what="the re-anchoring's alert")
    newest = daemon.bkctl_json("audit", "--limit", "1")["entries"][0]
    assert newest["id"] == 9 and newest["method"] == "audit.anchor"
    assert newest["params"]["database_head"]["id"] == 8
    assert alerts[0].startswith("the audit log was anchored anew by the daemon (its head record and marker were "
                                "missing) at entry 9")
    witness.keep([e for e in logged_entries(daemon) if e["id"] == 9], head_path(daemon))
    assert daemon.bkctl("audit", "--verify").returncode == 0  # an admin looked: the chain is whole
    assert audit_alerts(daemon) == []  # resolved by it


def test_hashes_recomputed_after_an_edit_are_caught_by_the_journal(setup):
    daemon, witness = setup
    with db(daemon) as conn:
        conn.row_factory = sqlite3.Row
        conn.execute("UPDATE audit SET outcome = 'forged' WHERE id = 2")
        prev = conn.execute("SELECT hash FROM audit WHERE id = 1").fetchone()[0]
        for row in conn.execute("SELECT * FROM audit WHERE id >= 2 ORDER BY id").fetchall():
            new = audit_hash(prev, dict(row))
            conn.execute("UPDATE audit SET prev_hash = ?, hash = ? WHERE id = ?", (prev, new, row["id"]))
            prev = new
    head_path(daemon).write_text(json.dumps({"id": 8, "hash": prev, "time": "x"}) + "\n")
    daemon.start(env=witness.env())
    verdict = daemon.bkctl("audit", "--verify")
    assert verdict.returncode == 1
    assert "audit entry 2 is not the one the journal recorded" in verdict.stdout
    assert json.loads(daemon.bkctl("--json", "audit", "--verify").stdout)["chain_ok"] is False


def test_everything_wiped_is_caught_by_the_journal(setup):
    daemon, witness = setup
    shutil.rmtree(daemon.workdir / "state")
    head_path(daemon).unlink()
    daemon.start(env=witness.env())
    verdict = daemon.bkctl("audit", "--verify")
    assert verdict.returncode == 1
    assert "the journal recorded audit 8 entries from 1 to 8, which the database does not hold (it holds no entries)" \
        in verdict.stdout
    wait_until(lambda: audit_alerts(daemon), 20, what="the audit log's alert")


def test_a_deliberate_rebuild_re_anchored_starts_a_new_chain_in_the_journal_too(setup, short_tmp):
    """`bkd audit reanchor` (from a shell) leaves its entry in the journal, and
    the journal's older records are then another chain's; the head is in
    every report and notification."""
    daemon, witness = setup
    state = daemon.workdir / "state"
    shutil.move(state / "bkd.sqlite", daemon.workdir / "bkd.sqlite.old")
    for extra in state.glob("bkd.sqlite-*"):
        extra.unlink()
    journal = FakeJournal(short_tmp / "journal.sock")
    try:
        done = subprocess.run([str(BIN / "bkd"), "--config", str(daemon.config_path), "audit", "reanchor"],
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "BKD_JOURNAL_SOCKET": str(journal.path)})
        assert done.returncode == 0, done.stderr
        record = wait_until(lambda: journal.entries, 10, what="the re-anchoring in the journal")[0]
    finally:
        journal.close()
    assert record["BKD_METHOD"] == b"audit.reanchor" and record["BKD_ID"] == b"1"
    assert record["BKD_ANCHOR"].decode() == str(head_path(daemon))
    witness.keep([{"id": int(record["BKD_ID"]), "hash": record["BKD_HASH"].decode(), "method": "audit.reanchor"}],
                 head_path(daemon))
    daemon.start(env=witness.env())
    alerts = wait_until(lambda: audit_alerts(daemon), 20, what="the re-anchoring's alert")
    assert alerts[0].startswith("the audit log was re-anchored by `bkd audit reanchor` at entry 1")
    verdict = daemon.bkctl("audit", "--verify")
    assert verdict.returncode == 0, verdict.stdout  # the older records were the previous chain's
    assert "journal: compared with 9 record(s) in the journal" in verdict.stdout
    assert audit_alerts(daemon) == []
    newest = daemon.call("audit.list", limit=1)["entries"][0]
    assert daemon.call("report")["audit_head"] == {"id": newest["id"], "hash": newest["hash"]}
    assert f"audit log: entry {newest['id']}, sha256 {newest['hash']}" in daemon.bkctl("report").stdout
